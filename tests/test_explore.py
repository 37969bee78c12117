"""The explorer page (``graphc explore``) and the one naming of nodes that code, diagrams and explain share.

The tests marked ``browser`` drive headless Chromium (Debian's ``chromium`` and ``chromium-driver``) through the
page with Selenium; they are skipped where either is missing, and run as their own step: ``pytest -m browser``.
"""
import json
import re
import runpy
import shutil
from pathlib import Path

import pytest

import graphc as gc
from graphc import viz
from graphc.cli import main
from graphc.cli.explain import node_table
from graphc.cli.explore import explore

from models import transformer

ROOT = Path(__file__).resolve().parent.parent
needs_layout = pytest.mark.skipif(viz.layout_program() is None, reason="neither dot nor graphviz-pure is installed")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1600,1000"]


def story(path: Path) -> dict:
    text = path.read_text()
    return json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S).group(1))


def assignments(source: str, function: str) -> set[str]:
    """The variables a generated function assigns (one per computed node)."""
    body = source.split(f"def {function}(", 1)[1].split("\n    return ", 1)[0]
    return set(re.findall(r"^    (\w+) = ", body, re.M))


# -- one naming ---------------------------------------------------------------------------------------------------
def test_mlp_diagram_code_and_explain_use_the_same_name_for_every_node():
    g = runpy.run_path(str(ROOT / "examples" / "mlp_model.py"))["g"]
    prog = gc.compile(g, loss="loss", optimizer=gc.SGD(0.3))
    trained = gc.optim.training_graph(g, "loss", gc.SGD(0.3))  # what `graphc show --train` draws
    for function, graph in (("_compute", viz.diagram(g, "optimized").graph),
                            ("_train", viz.diagram(trained, "optimized").graph)):
        titles = {viz.node_label(graph, nid)[0] for nid in graph.order()}
        emitted = prog.emitted[function]
        assert set(emitted.names.values()) == titles
        computed = {emitted.names[nid] for nid in emitted.lines if graph.nodes[nid].op != "const"}
        updated = {name for name in computed if name.startswith("new_")}  # written into the param in place
        assert assignments(prog.source, function) == computed - updated
    explained = {row.split()[0] for row in node_table(prog)[1:]}
    assert explained == titles
    assert {"xW1", "xT", "W2T", "relu_grad", "dW1"} <= titles  # named by what they compute


def test_generated_names_say_what_is_computed():
    with gc.Graph("words") as g:
        x = gc.input("x", (gc.dim("m"), 3))
        g.output(a=gc.exp(x / gc.sqrt(x + 2)))
    source = gc.compile(g, opt_level=0).source
    assert "sqrt = np.sqrt(add" in source and "div = np.divide(x, sqrt" in source and "pow" not in source


def test_fused_nodes_keep_the_user_names_they_absorbed():
    g, _ = transformer()
    optimized = viz.diagram(g, "optimized").graph
    absorbed = {name for names in optimized.absorbed.values() for name in names}
    assert "var" in absorbed
    sqrt = next(nid for nid, names in optimized.absorbed.items() if "var" in names)
    assert "fused: var" in viz.node_label(optimized, sqrt)[1]


# -- the page -----------------------------------------------------------------------------------------------------
@needs_layout
def test_explore_writes_one_self_contained_page_per_stage_and_pass(tmp_path):
    model = ROOT / "examples" / "cnn_digits.py"
    assert main(["explore", str(model), "-o", str(tmp_path / "cnn.html")]) == 0
    page = (tmp_path / "cnn.html").read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page) and "@import" not in page
    data = story(tmp_path / "cnn.html")
    labels = [s["label"] for s in data["steps"]]
    assert labels[:2] == ["forward", "backward"] and labels[-1] == "final" and len(labels) > 10
    assert f'max="{len(labels) - 1}"' in page and page.count('<div class="step"') == len(labels)
    final = data["steps"][-1]["nodes"]
    conv = next(n for n in final.values() if n["op"] == "conv2d")
    assert conv["storage"].startswith("B[") and "m" in conv["bytes"] and conv["dtype"] == "float32"
    assert all(name in {n["name"] for n in final.values()} for name in data["lines"])
    assert any(s["changed"] for s in data["steps"][2:])


@needs_layout
def test_explore_shows_a_transformer_block(tmp_path):
    g, _ = transformer()
    explore(g, tmp_path / "t.html", loss="loss", optimizer=gc.SGD(0.1))
    data = story(tmp_path / "t.html")
    names = {n["name"] for n in data["steps"][-1]["nodes"].values()}
    assert {"att", "hn", "mu", "sqrt", "dWq"} <= names
    fused = [n["fused"] for n in data["steps"][-1]["nodes"].values() if n["fused"]]
    assert ["var"] in fused


# -- in a real browser --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def visible_node(driver, name: str):
    from selenium.webdriver.common.by import By
    key = driver.execute_script(
        "const nodes = data.steps[current].nodes;"
        "return Object.keys(nodes).find((k) => nodes[k].name === arguments[0]);", name)
    return driver.find_element(By.CSS_SELECTOR, f'.step:not([hidden]) g.node[data-key="{key}"]')


def walk(driver, page: Path, shots: Path, node: str):
    """Load the page, move the slider through every stage, click a node and a line; screenshots on the way."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    driver.get(page.as_uri())
    count = driver.execute_script("return data.steps.length")
    slider = driver.find_element(By.ID, "slider")
    seen = []
    for k in range(count):
        seen.append(driver.find_element(By.ID, "label").text)
        visible = driver.find_elements(By.CSS_SELECTOR, ".step:not([hidden])")
        assert len(visible) == 1 and visible[0].get_attribute("data-step") == str(k)
        if k == 3:
            driver.save_screenshot(str(shots / f"{page.stem}-pass.png"))
        slider.send_keys(Keys.ARROW_RIGHT)  # as a person moves it
    assert seen[0] == "forward" and seen[-1] == "final" and len(set(seen)) == count
    visible_node(driver, node).click()
    hits = driver.find_elements(By.CSS_SELECTOR, ".line.hit")
    assert hits and all(h.get_attribute("data-name") == node for h in hits)
    assert f"{node} = " in " ".join(h.text for h in hits)
    assert driver.find_element(By.ID, "facts").text.splitlines()[:2] == ["node", node]
    driver.save_screenshot(str(shots / f"{page.stem}-final.png"))
    line = next(el for el in driver.find_elements(By.CSS_SELECTOR, ".line[data-name]")
                if el.get_attribute("data-name") not in ("", node))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", line)
    line.click()
    selected = driver.find_elements(By.CSS_SELECTOR, ".step:not([hidden]) g.node.selected")
    assert len(selected) == 1
    key = selected[0].get_attribute("data-key")
    assert driver.execute_script("return data.steps[current].nodes[arguments[0]].name", key) == \
        line.get_attribute("data-name")
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


@pytest.mark.browser
@needs_layout
def test_browser_walks_the_cnn(browser, tmp_path):
    assert main(["explore", str(ROOT / "examples" / "cnn_digits.py"), "-o", str(tmp_path / "cnn.html")]) == 0
    walk(browser, tmp_path / "cnn.html", tmp_path, "h3")
    assert (tmp_path / "cnn-pass.png").stat().st_size > 10_000 and (tmp_path / "cnn-final.png").exists()


@pytest.mark.browser
@needs_layout
def test_browser_walks_a_transformer_block(browser, tmp_path):
    g, _ = transformer()
    walk(browser, explore(g, tmp_path / "transformer.html", loss="loss", optimizer=gc.SGD(0.1)), tmp_path, "hn")
    assert (tmp_path / "transformer-final.png").stat().st_size > 10_000
