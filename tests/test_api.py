"""The public surface: exports, import weight, reprs."""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import pickle
import subprocess
import sys
import types

import pytest

import ssekit


def test_all_lists_exactly_the_public_names() -> None:
    # Subpackages (ssekit.proxy, ssekit.client) appear once imported; they are not re-exports.
    public = {
        name
        for name, value in vars(ssekit).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(ssekit.__all__) == public
    for name in ssekit.__all__:
        assert getattr(ssekit, name) is not None


def test_importing_ssekit_loads_neither_anyio_nor_h11_nor_httpx() -> None:
    code = (
        "import sys, ssekit; "
        "print(sorted(m for m in ('anyio', 'h11', 'httpx', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_source_of_public_names_is_found_by_inspect() -> None:
    # Debuggers and inspect.getsource look a class up in its __module__'s file.
    assert "class Decoder" in inspect.getsource(ssekit.Decoder)
    assert "class LimitExceeded" in inspect.getsource(ssekit.LimitExceeded)
    assert "def encode(" in inspect.getsource(ssekit.encode)
    assert "def iter_chunks(" in inspect.getsource(ssekit.iter_chunks)


def test_reprs_stay_readable() -> None:
    assert repr(ssekit.Event(data="x")) == "Event(data='x', event='message', id='', retry=None)"
    assert repr(ssekit.Comment(text="hb")) == "Comment(text='hb')"
    assert repr(ssekit.Decoder()).startswith("<ssekit.Decoder open ")
    assert repr(ssekit.EncodeError("bad")) == "EncodeError('bad')"


EXCEPTIONS = [
    ssekit.SSEError("x"),
    ssekit.StateError("closed"),
    ssekit.LimitExceeded("line", 9, 8, "max_event_size", events=[ssekit.Event(data="a")]),
    ssekit.EncodeError("bad id"),
    ssekit.InputTypeError("feed takes bytes", argument="data", got="str"),
    ssekit.NotAnEventStream("a JSON body", '{"error": {}}'),
    ssekit.OpenAIStreamError("x"),
    ssekit.ChunkError("not JSON"),
    ssekit.APIErrorEvent("boom", {"message": "boom", "code": 500}),
    ssekit.StreamIncomplete("cut"),
    ssekit.ProxyError("x"),
    ssekit.UpstreamError("timed out", 504),
    ssekit.ConfigError("--port"),
    ssekit.ClientError("x"),
    ssekit.ResponseError("503", 503, "busy"),
    ssekit.RetriesExhausted("gave up", 3),
]


def test_every_exception_is_listed_for_the_pickle_test() -> None:
    listed = {type(exc) for exc in EXCEPTIONS}
    exported = {
        value
        for value in vars(ssekit).values()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    assert exported == listed


@pytest.mark.parametrize("exc", EXCEPTIONS, ids=lambda exc: type(exc).__name__)
def test_exceptions_survive_pickling_with_their_attributes(exc: Exception) -> None:
    # multiprocessing and concurrent.futures pickle exceptions to send them back.
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert str(copy) == str(exc)
    assert copy.args == exc.args
    assert vars(copy) == vars(exc)


def test_an_exception_raised_in_a_worker_process_comes_back_whole() -> None:
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        future = pool.submit(_overflow)
        with pytest.raises(ssekit.LimitExceeded) as info:
            future.result(timeout=60)
    assert (info.value.limit, info.value.size, info.value.maximum) == ("line", 9, 4)


def _overflow() -> None:
    ssekit.Decoder(max_event_size=4).feed(b"data:6789")


@pytest.mark.parametrize(
    "kwargs", [{"data": 1}, {"data": b"x"}, {"event": None}, {"id": 7}, {"retry": "5000"}]
)
def test_events_with_wrong_types_are_refused_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        ssekit.Event(**kwargs)  # type: ignore[arg-type]


def test_event_json_parses_the_data() -> None:
    assert ssekit.Event(data='{"n": 1, "text": "你好"}').json() == {"n": 1, "text": "你好"}
    assert ssekit.Event(data="[1, 2]").json() == [1, 2]
    with pytest.raises(json.JSONDecodeError) as info:
        ssekit.Event(data="[DONE]").json()
    assert info.value.doc == "[DONE]"


def test_openai_helpers_are_a_public_module_and_top_level_names() -> None:
    import ssekit.openai

    for name in ssekit.openai.__all__:
        if name not in ("Chunk", "ChunkChoice", "ChunkDelta"):  # types stay in ssekit.openai
            assert getattr(ssekit, name) is getattr(ssekit.openai, name)
    code = "import ssekit.openai, sys; print([m for m in ('anyio', 'h11') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_exception_families() -> None:
    assert issubclass(ssekit.LimitExceeded, ssekit.SSEError)
    assert issubclass(ssekit.EncodeError, ValueError)
    assert issubclass(ssekit.InputTypeError, TypeError)
    assert issubclass(ssekit.InputTypeError, ssekit.SSEError)
    assert issubclass(ssekit.UpstreamError, ssekit.ProxyError)
    assert issubclass(ssekit.ConfigError, ssekit.ProxyError)
    assert issubclass(ssekit.StreamIncomplete, ssekit.OpenAIStreamError)
    assert issubclass(ssekit.RetriesExhausted, ssekit.ClientError)


def test_events_are_immutable() -> None:
    event = ssekit.Event(data="x")
    try:
        event.data = "y"  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("Event must be frozen")
    assert event.data == "x"


def _imported_modules(package: str) -> set[str]:
    """Every module the files of ``ssekit.<package>`` import, as absolute names."""
    import ast
    import pathlib

    root = pathlib.Path(ssekit.__file__).parent
    found: set[str] = set()
    for path in (root / package).rglob("*.py"):
        here = ["ssekit", *path.relative_to(root).with_suffix("").parts[:-1]]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return found


def test_client_and_proxy_share_the_http_layer_not_each_others_internals() -> None:
    client = _imported_modules("client")
    proxy = _imported_modules("proxy")
    assert not {m for m in client if m.startswith("ssekit.proxy")}, client
    assert not {m for m in proxy if m.startswith("ssekit.client")}, proxy
    assert "ssekit._http" in client
    assert "ssekit._http" in proxy


def test_cli_defaults_are_the_config_defaults() -> None:
    import dataclasses

    from ssekit._cli import _parser
    from ssekit.proxy import ProxyConfig

    args = _parser().parse_args(["proxy"])
    for option in dataclasses.fields(ProxyConfig):
        if "help" in option.metadata:
            assert getattr(args, option.name) == option.default, option.name
    assert args.listen == ("127.0.0.1", 8080)


def test_asgi_core_loads_no_framework_and_httpx_module_no_starlette() -> None:
    code = (
        "import sys, ssekit.asgi; a = sorted(m for m in ('starlette', 'httpx', 'fastapi') "
        "if m in sys.modules); import ssekit.httpx; "
        "print(a, 'starlette' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] False"


def test_integration_modules_export_what_they_list() -> None:
    import ssekit.asgi
    import ssekit.httpx
    import ssekit.starlette

    for module in (ssekit.asgi, ssekit.httpx, ssekit.starlette):
        for name in module.__all__:
            assert getattr(module, name) is not None, (module.__name__, name)
    assert ssekit.httpx.RetryPolicy is __import__("ssekit.client").client.RetryPolicy
