# The Python half of the worker: runs cells in a persistent namespace, notebook style.
# Loaded once per worker process; `_axp_run` is called once per execution.
import ast
import builtins
import io
import linecache
import os
import signal
import sys
import types

_DRIVER = "<axp-driver>"
# Characters kept of an exception's type name, message and traceback.
_ERROR_LIMIT = 64 * 1024
_ns = None
_streams = {}


def _axp_fresh():
    """Starts an empty `__main__` namespace (what `reset` and a new worker give)."""
    global _ns
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    _ns = main.__dict__


class _AxpOutput(io.RawIOBase):
    """fd 1 or 2 for whoever asks (`fileno()`), but writes go straight to the agent through `emit`."""

    def __init__(self, fd):
        self._fd = fd

    def writable(self):
        return True

    def fileno(self):
        return self._fd

    def isatty(self):
        return False

    def write(self, data):
        return emit(self._fd - 1, bytes(data))  # added to this module by the worker (Rust)


def _axp_stream(fd):
    # Line-buffered: a print loop reaches the agent line by line, not byte by byte.
    return io.TextIOWrapper(
        _AxpOutput(fd),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )


def _axp_install_streams():
    """Gives the cell working sys.stdout/sys.stderr even if an earlier cell closed or replaced them."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = _streams.get(name)
        if stream is None or stream.closed:
            stream = _streams[name] = _axp_stream(fd)
        setattr(sys, name, stream)
        setattr(sys, "__" + name + "__", stream)


def _axp_flush():
    for stream in (sys.stdout, sys.stderr, _streams.get("stdout"), _streams.get("stderr")):
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except BaseException:
            pass


def _axp_describe(exc):
    """(type name, message, traceback text) with the driver's own frames removed."""
    try:
        # Imported on the first error, not at start: it costs every worker memory, and most cells succeed.
        import traceback

        name = type(exc).__name__
        try:
            message = str(exc)
        except BaseException:
            message = "<exception str() failed>"
        if isinstance(exc, SyntaxError):
            text = "".join(traceback.format_exception_only(type(exc), exc))
        else:
            te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
            te.stack = traceback.StackSummary.from_list(
                [frame for frame in te.stack if frame.filename != _DRIVER]
            )
            text = "".join(te.format())
        return (name, message, text)
    except BaseException:
        return (type(exc).__name__, "", type(exc).__name__ + "\n")


def _axp_exec(source, filename):
    """Runs a cell notebook style: the value of its last statement if that is an expression, else None."""
    expression = None
    if "\n" not in source.strip():
        # A one-line cell that is one expression (`print(x)`, `df.head()`: the common case) compiles straight from
        # the source, without the Python-level syntax tree the general case needs, which costs as much again.
        # Longer cells are seldom one expression, and a failed attempt would cost them the time it saves.
        try:
            expression = compile(source, filename, "eval")
        except (SyntaxError, ValueError):
            pass
    if expression is not None:
        return eval(expression, _ns)
    tree = ast.parse(source, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, filename, "exec"), _ns)
    if last is not None:
        return eval(compile(last, filename, "eval"), _ns)
    return None


def _axp_run(source, filename, reset, value_limit):
    """Runs one cell; returns (value repr or None, value truncated, error triple or None)."""
    if reset or _ns is None:
        _axp_fresh()
    _axp_install_streams()
    # An earlier cell may have ignored SIGINT; the agent relies on it to interrupt a cell at its timeout.
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    value = None
    error = None
    try:
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        result = _axp_exec(source, filename)
        if result is not None:
            _ns["_"] = result
            value = repr(result)
    except BaseException as exc:
        error = _axp_describe(exc)
        exc = None
        # A huge message (`raise ValueError('x' * 10**8)`) must not overflow the protocol frame or the AXP message.
        limit = min(value_limit, _ERROR_LIMIT)
        error = tuple(part if len(part) <= limit else part[:limit] + " [truncated]" for part in error)
    finally:
        _axp_flush()
    truncated = False
    if value is not None and len(value) > value_limit:
        value = value[:value_limit]
        truncated = True
    return (value, truncated, error)


_BLOCKED = {"os.fork", "os.forkpty"}
_BLOCKED_SUBPROCESS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "pty.spawn"}


def _axp_guard_exit():
    """`os._exit` skips every flush: forward what the cell printed before the process goes."""
    real_exit = os._exit

    def _exit(status):
        try:
            _axp_flush()
            drain_output()  # added to this module by the worker (Rust)
        finally:
            real_exit(status)

    os._exit = _exit


def _axp_check_venv(venv):
    """The interpreter took `venv` as its prefix, and the venv was made for this Python version."""
    if os.path.realpath(sys.prefix) != os.path.realpath(venv):
        raise RuntimeError(f"{venv} was not taken as the virtual environment (sys.prefix is {sys.prefix})")
    with open(os.path.join(venv, "pyvenv.cfg"), encoding="utf-8") as cfg:
        for line in cfg:
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info"):
                made_for = tuple(int(part) for part in value.strip().split(".")[:2])
                if made_for != sys.version_info[:2]:
                    raise RuntimeError(
                        f"{venv} was made for Python {made_for[0]}.{made_for[1]}, "
                        f"this worker embeds {sys.version_info[0]}.{sys.version_info[1]}"
                    )
                break


def _axp_setup(block_subprocess, venv=None):
    """Once per worker: signals, the audit hook, argv and executable, the first namespace."""
    if venv is not None:
        _axp_check_venv(venv)
    # SIGINT from the agent interrupts a cell that overran its timeout (KeyboardInterrupt), so the
    # namespace survives when the code yields to the interpreter; the agent kills the worker otherwise.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = frozenset(_BLOCKED | (_BLOCKED_SUBPROCESS if block_subprocess else set()))

    def audit(event, args):
        if event in blocked:
            raise PermissionError(f"{event} is not allowed in this sandbox")

    sys.addaudithook(audit)
    sys.argv = [""]
    if venv is not None:
        candidate = os.path.join(venv, "bin", "python")
    else:
        candidate = os.path.join(sys.base_prefix, "bin", "python%d.%d" % sys.version_info[:2])
    if os.path.exists(candidate):
        sys.executable = candidate
    sys.dont_write_bytecode = True
    _axp_guard_exit()
    _axp_fresh()
    _axp_install_streams()
    return (sys.version, sys.prefix, sys.executable)
