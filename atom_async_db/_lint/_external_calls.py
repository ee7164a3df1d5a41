"""ATOM107, long transactions with external calls: an HTTP request, a sleep or a
subprocess while a session is open holds its connection, and the locks it took, for as
long as the call takes.

Slow calls: ``requests.*`` and ``httpx.*`` requests, the request methods of a client
(``httpx.Client``/``AsyncClient``, ``requests.Session``, ``aiohttp.ClientSession``) bound
in the function, at module level or on ``self``, ``urllib.request.urlopen``,
``time.sleep``, ``asyncio.sleep``, ``subprocess.run``/``call``/``check_call``/
``check_output``, and the module's own functions that make one (``external_api_call()``
defined in the same file).

Where a session is open:

- the body of ``with get_db_session() as db:``, ``async with get_async_db_session()``,
  ``with SessionLocal() as db:`` and the like (anywhere in it);
- a function with a session parameter: for an injected one (``Depends(get_db)``,
  ``AsyncDB``), from its first use up to a ``commit()``, ``rollback()`` or ``close()`` on
  it, in source order; for one the caller passed in, from the start. Branches and loops
  are not followed: source order stands for execution order.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ._facts import FunctionNode, Source, functions, opener, own_nodes, position, session_params
from ._model import Finding, finding

__all__ = ["check"]

CODE = "ATOM107"
_HTTP_METHODS = frozenset(
    {"get", "post", "put", "patch", "delete", "head", "options", "request", "send", "stream"}
)
_HTTP_MODULES = ("requests", "httpx", "aiohttp")
_CLIENTS = frozenset(
    {
        "httpx.Client",
        "httpx.AsyncClient",
        "requests.Session",
        "requests.session",
        "aiohttp.ClientSession",
    }
)
_SLOW = {
    "time.sleep": "a sleep",
    "asyncio.sleep": "a sleep",
    "urllib.request.urlopen": "an HTTP call",
    "subprocess.run": "a subprocess",
    "subprocess.call": "a subprocess",
    "subprocess.check_call": "a subprocess",
    "subprocess.check_output": "a subprocess",
}
_ENDS = frozenset({"commit", "rollback", "close"})


def check(source: Source) -> Iterator[Finding]:
    """ATOM107 in ``source``.

    Raises:
        Nothing.
    """
    module_clients = _clients(source.tree.body, source)
    module_clients |= {
        text
        for func in functions(source.tree)
        for text in _clients(func.body, source)
        if text.startswith("self.")
    }
    slow_functions = _slow_functions(source, module_clients)
    reported: set[int] = set()
    scopes: list[tuple[FunctionNode | None, list[ast.stmt]]] = [(None, source.tree.body)]
    scopes += [(func, func.body) for func in functions(source.tree)]
    for func, body in scopes:
        clients = module_clients | _clients(body, source)
        for call, region in _open_regions(func, body, source):
            if id(call) in reported:
                continue
            what = _slow(call, source, clients, slow_functions)
            if what is None:
                continue
            reported.add(id(call))
            yield finding(
                source.path,
                call,
                CODE,
                f"Long transaction with external calls: {what} {region}: the session "
                "keeps its connection and locks while it waits; make the call before or "
                "after the database work",
            )


def _clients(body: list[ast.stmt], source: Source) -> set[str]:
    """The expressions (``client``, ``self.http``) bound to an HTTP client in ``body``."""
    found: set[str] = set()
    for node in own_nodes(body):
        pairs: list[tuple[ast.expr, ast.expr]] = []
        if isinstance(node, ast.Assign):
            pairs = [(target, node.value) for target in node.targets]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            pairs = [(node.target, node.value)]
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            pairs = [
                (item.optional_vars, item.context_expr)
                for item in node.items
                if item.optional_vars is not None
            ]
        for target, value in pairs:
            if isinstance(value, ast.Call) and source.qualify(value.func) in _CLIENTS:
                found.add(ast.unparse(target))
    return found


def _direct_slow(call: ast.Call, source: Source, clients: set[str]) -> str | None:
    """What slow thing ``call`` does itself, e.g. "an HTTP call `requests.get()`"."""
    qualified = source.qualify(call.func)
    shown = f"`{ast.unparse(call.func)}()`"
    if qualified in _SLOW:
        return f"{_SLOW[qualified]} {shown}"
    module, _, function = qualified.rpartition(".")
    if module in _HTTP_MODULES and function in _HTTP_METHODS:
        return f"an HTTP call {shown}"
    if (
        isinstance(call.func, ast.Attribute)
        and call.func.attr in _HTTP_METHODS
        and ast.unparse(call.func.value) in clients
    ):
        return f"an HTTP call {shown}"
    return None


def _slow_functions(source: Source, clients: set[str]) -> dict[str, str]:
    """The module's top-level functions that make a slow call, directly or through each
    other: name → what they do ("an HTTP call `requests.get()`, line 12").
    """
    defined = {
        node.name: node
        for node in source.tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    slow: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for name, func in defined.items():
            if name in slow:
                continue
            local = clients | _clients(func.body, source)
            for node in own_nodes(func.body):
                if not isinstance(node, ast.Call):
                    continue
                what = _direct_slow(node, source, local)
                if what is None and isinstance(node.func, ast.Name) and node.func.id in slow:
                    what = f"`{node.func.id}()`"
                if what is not None:
                    slow[name] = f"{what} on line {node.lineno}"
                    changed = True
                    break
    return slow


def _slow(
    call: ast.Call, source: Source, clients: set[str], slow_functions: dict[str, str]
) -> str | None:
    what = _direct_slow(call, source, clients)
    if what is not None:
        return what
    if isinstance(call.func, ast.Name) and call.func.id in slow_functions:
        return f"`{call.func.id}()` ({slow_functions[call.func.id]})"
    return None


def _open_regions(
    func: FunctionNode | None, body: list[ast.stmt], source: Source
) -> Iterator[tuple[ast.Call, str]]:
    """Each call made while a session is open in ``body`` (a function's, or the module's),
    with where: "inside `with get_db_session()`", "while `get_user` holds `db`".
    """
    nodes = list(own_nodes(body))
    for node in nodes:
        if not isinstance(node, (ast.With, ast.AsyncWith)):
            continue
        for item in node.items:
            found = opener(item.context_expr, source)
            if found is not None and found.how in {"context", "factory"}:
                keyword = "async with" if isinstance(node, ast.AsyncWith) else "with"
                region = f"inside `{keyword} {found.text}`"
                for inner in own_nodes(node.body):
                    if isinstance(inner, ast.Call):
                        yield inner, region
                break
    if func is None:
        return
    ordered = sorted(nodes, key=position)
    for param in session_params(func, source):
        methods = {
            id(node): node.func.attr
            for node in nodes
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == param.name
        }
        receivers = {
            id(node.func.value)
            for node in nodes
            if isinstance(node, ast.Call)
            and id(node) in methods
            and isinstance(node.func, ast.Attribute)
        }
        held = not param.injected
        for node in ordered:
            if id(node) in methods:
                held = methods[id(node)] not in _ENDS
            elif isinstance(node, ast.Call) and held:
                yield node, f"while `{func.name}` holds the session `{param.name}`"
            elif isinstance(node, ast.Name) and node.id == param.name and id(node) not in receivers:
                held = True
