import { createReadStream } from 'node:fs'

/** Reads per chunk: the uploads copy them into their part buffers, so this bounds nothing else. */
const READ_CHUNK = 1 << 20

/**
 * Exactly `size` bytes of `file`, its size when it was listed, read in chunks. A file that grows
 * or shrinks while it is read fails with the error `changed` makes of the counts (`more bytes, 10
 * when listed`), instead of storing bytes that no listing or record describes; one that grew is
 * read no further than one chunk past `size`, so a log or shard still being written is never
 * read whole into memory.
 */
export async function* readExactly(file: string, size: number, changed: (counts: string) => Error): AsyncGenerator<Buffer> {
  let read = 0
  for await (const chunk of createReadStream(file, { highWaterMark: READ_CHUNK }) as AsyncIterable<Buffer>) {
    read += chunk.length
    if (read > size) break
    yield chunk
  }
  if (read !== size) throw changed(`${read > size ? 'more' : read} bytes, ${size} when listed`)
}
