/**
 * All of `chunks` in one buffer, refused with `tooLarge(bytes so far)` as soon as they pass `max`:
 * for what is read whole but may not be trusted to stay small (a control object, a manifest on a
 * location, a local file that grows after it was sized), so that no more than one chunk past `max`
 * is ever held.
 */
export async function collectUpTo(chunks: AsyncIterable<Buffer>, max: number, tooLarge: (bytes: number) => Error): Promise<Buffer> {
  const out: Buffer[] = []
  let size = 0
  for await (const c of chunks) {
    size += c.length
    if (size > max) throw tooLarge(size)
    out.push(c)
  }
  return Buffer.concat(out)
}
