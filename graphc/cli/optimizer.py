"""The optimizer of ``graphc build | explain | show --train``, from the command line's flags."""
from __future__ import annotations

import ast

from graphc.core.errors import GraphError
from graphc.optim import SGD, Adam, AdamW, schedules

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
ONLY = {"momentum": "sgd", "dampening": "sgd", "nesterov": "sgd", "betas": "adam/adamw", "eps": "adam/adamw",
        "amsgrad": "adam/adamw"}  # the flags of one update rule


def add_arguments(p) -> None:
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="sgd", help="update rule (default: sgd)")
    p.add_argument("--lr", type=float, help="learning rate, the default of train_step's lr= (sgd: 0.01, adam: 0.001)")
    p.add_argument("--momentum", type=float, help="sgd: momentum")
    p.add_argument("--dampening", type=float, help="sgd: dampening of the momentum")
    p.add_argument("--nesterov", action="store_true", default=None, help="sgd: Nesterov momentum")
    p.add_argument("--betas", type=float, nargs=2, metavar=("BETA1", "BETA2"), help="adam: moment decay rates")
    p.add_argument("--eps", type=float, help="adam: the denominator's epsilon")
    p.add_argument("--amsgrad", action="store_true", default=None, help="adam: the running maximum of v")
    p.add_argument("--weight-decay", type=float, help="L2 penalty (sgd, adam) or decoupled decay (adamw)")
    p.add_argument("--clip-grad-norm", type=float, help="scale the gradients to this global L2 norm at most")
    p.add_argument("--schedule", metavar="EXPR",
                   help="learning-rate schedule of gc.schedules, e.g. 'linear_warmup(100, then=cosine(900))'")


def from_args(args):
    """The optimizer the flags describe; GraphError for a flag of another update rule or a bad schedule."""
    given = {k: getattr(args, k) for k in (*ONLY, "weight_decay", "clip_grad_norm") if getattr(args, k) is not None}
    wrong = [k for k in given if k in ONLY and args.optimizer not in ONLY[k].split("/")]
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise GraphError(f"{flags}: not an option of --optimizer {args.optimizer}")
    if "betas" in given:
        given["betas"] = tuple(given["betas"])
    if args.lr is not None:
        given["lr"] = args.lr
    if args.schedule:
        given["schedule"] = schedule(args.schedule)
    return OPTIMIZERS[args.optimizer](**given)


def schedule(text: str):
    """A schedule written as calls of gc.schedules' functions with numbers, joined by ``*`` (``cosine(1000)``,
    ``step(30, gamma=0.5) * linear_warmup(5)``, ``linear_warmup(100, then=cosine(900))``); read, never evaluated."""
    try:
        value = _schedule_node(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, TypeError) as exc:
        raise GraphError(f"--schedule {text!r}: {exc}") from None
    if not isinstance(value, schedules.Schedule):
        raise GraphError(f"--schedule {text!r} is not a schedule: use {', '.join(SCHEDULES)}")
    return value


SCHEDULES = ("step", "cosine", "linear_warmup")


def _schedule_node(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_schedule_node(node.operand)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _schedule_node(node.left) * _schedule_node(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SCHEDULES:
        args = [_schedule_node(a) for a in node.args]
        kwargs = {k.arg: _schedule_node(k.value) for k in node.keywords}
        return getattr(schedules, node.func.id)(*args, **kwargs)
    raise ValueError(f"{ast.unparse(node)!r} is not a number or a call of {', '.join(SCHEDULES)}")
