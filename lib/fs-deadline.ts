/** How long a file-system call on the data path may take before it counts as a stalled mount. */
export const FS_DEADLINE_MS = 10_000

/**
 * `op` (an fs/promises call: it runs on the thread pool, so the event loop never waits on it), or
 * an ETIMEDOUT error naming `path` once `ms` pass: a stalled FUSE mount never answers, and the
 * caller must be able to report that instead of hanging. The call itself is left to finish whenever it does.
 */
export async function withDeadline<T>(op: Promise<T>, path: string, ms = FS_DEADLINE_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error(`${path} did not answer within ${ms / 1000} s; is the mount stalled?`), { code: 'ETIMEDOUT' })), ms)
    timer.unref()
  })
  try {
    return await Promise.race([op, deadline])
  } finally {
    clearTimeout(timer)
  }
}
