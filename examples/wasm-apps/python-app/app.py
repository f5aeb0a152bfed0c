"""A wasi:http/proxy handler in Python, for the runtime benchmark.

Built by examples/wasm-apps/build.sh with componentize-py (the bindings
module `wit_world` is generated at build time from the wasi:http WIT of the
wasmtime-wasi-http crate, so it is not in the repo).
Every request gets 200 with the body "hello from python\n".
"""

from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Err, Ok

BODY = b"hello from python\n"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        headers = Fields.from_list(
            [
                ("content-type", b"text/plain"),
                ("content-length", str(len(BODY)).encode()),
            ]
        )
        response = OutgoingResponse(headers)
        response.set_status_code(200)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        try:
            with body.write() as stream:
                stream.blocking_write_and_flush(BODY)
        except Err:
            # The client went away (e.g. wrk closing its connections at the
            # end of a run): nothing left to send, and not a guest failure.
            return
        OutgoingBody.finish(body, None)
