"""cupy.cuda.compiler: the error a kernel that does not compile raises."""


class CompileException(Exception):
    def __init__(self, msg, source="", name="", options=(), backend="c++"):
        super().__init__(msg)
        self.source, self.name, self.options, self.backend = source, name, options, backend
