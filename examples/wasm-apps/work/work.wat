;; A CGI-style HTTP app that does a fixed amount of CPU work per request
;; (about 50 ms on a 2020s x86 core under wasmtime), then answers "done".
;; The work is a count of iterations, not a time: under contention it takes
;; longer in wall time, as real work would. For the noisy-neighbour
;; benchmark (bench/noisy.sh).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 0: { ptr = 16, len = 31 }
  (data (i32.const 16) "Content-Type: text/plain\n\ndone\n")
  ;; Iterations of a xorshift step: calibrated for about 50 ms.
  (global $iterations i64 (i64.const 34000000))
  (func (export "_start")
    (local $i i64)
    (local $x i64)
    (local.set $x (i64.const 88172645463325252))
    (loop $step
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
      (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $step (i64.lt_u (local.get $i) (global.get $iterations))))
    ;; Keep the result, so the work is needed.
    (i64.store (i32.const 64) (local.get $x))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 31))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
