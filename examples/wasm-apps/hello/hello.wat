;; The smallest CGI-style HTTP app: writes a header block and a body to
;; stdout with one fd_write call.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 0: { ptr = 16, len = 44 }
  (data (i32.const 16) "Content-Type: text/plain\n\nHello from Shoal!\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 44))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
