// A wasi:http/proxy component in JavaScript, built by ../build.sh with
// componentize-js (the SpiderMonkey engine of StarlingMonkey inside).
//
// It exports wasi:http/incoming-handler itself, through the bindings that
// componentize-js generates for the wasi:http WIT of the wasmtime-wasi-http
// crate Shoal runs on. (componentize-js's `fetch` event listener is wired to
// the wasi:http version its engine was built with, 0.2.10, and cannot be
// pointed at that WIT; see ../README.md.)
//
// Every request gets 200 with the body "hello from javascript\n".

import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from "wasi:http/types@0.2.12";

const encoder = new TextEncoder();
const BODY = encoder.encode("hello from javascript\n");
const CONTENT_TYPE = encoder.encode("text/plain");
const CONTENT_LENGTH = encoder.encode(String(BODY.length));

export const incomingHandler = {
  handle(_request, responseOut) {
    const headers = Fields.fromList([
      ["content-type", CONTENT_TYPE],
      ["content-length", CONTENT_LENGTH],
    ]);
    const response = new OutgoingResponse(headers);
    response.setStatusCode(200);
    const body = response.body();
    ResponseOutparam.set(responseOut, { tag: "ok", val: response });
    const stream = body.write();
    try {
      stream.blockingWriteAndFlush(BODY);
    } catch (_e) {
      // The client went away (e.g. wrk closing its connections at the end
      // of a run): nothing left to send, and not a guest failure.
      return;
    }
    // The stream is a child of the body: drop it before finishing the body.
    stream[Symbol.dispose]();
    OutgoingBody.finish(body, undefined);
  },
};
