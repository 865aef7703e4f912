// Imported first by the bench: file reads run on libuv's thread pool, 4 threads unless told
// otherwise, which would make "8 parallel readers" 4. The pool starts on first use, after this.
process.env.UV_THREADPOOL_SIZE = '16'
