import { createReadStream } from 'node:fs'
import path from 'node:path'
import { digestContent, normalizeCid, type ContentDigest } from '../lib/content/cid.js'
import type { DataLineage } from '../lib/content/lineage.js'
import { O3Client, type O3Flags } from '../lib/o3/index.js'

/** The CID of one file of the data at a location: a local directory or `o3://bucket/prefix`. */
type Digester = (relPath: string) => Promise<ContentDigest>

function digesterFor(location: string, flags: O3Flags): { digest: Digester; close(): void } {
  if (!/^(o3|s3):\/\//.test(location)) {
    return { digest: (p) => digestContent(createReadStream(path.join(location, ...p.split('/'))) as AsyncIterable<Buffer>), close: () => {} }
  }
  const client = O3Client.open(location, flags)
  return {
    async digest(p) {
      // A range request on an empty object is refused: its CID needs no GET.
      if ((await client.head(p)).size === 0) return digestContent(new Uint8Array(0))
      return digestContent(client.iterateRange(p))
    },
    close: () => client.close(),
  }
}

/**
 * Checks that the data a checkpoint names (`lineage`) is the data at `location` now: the
 * manifest's CID and each recorded file's CID. Returns one line per difference; none when it matches.
 */
export async function checkDataLineage(lineage: DataLineage, location: string, flags: O3Flags): Promise<string[]> {
  const { digest, close } = digesterFor(location, flags)
  const problems: string[] = []
  const compare = async (p: string, cid: string) => {
    try {
      const got = await digest(p)
      if (got.cid !== normalizeCid(cid)) problems.push(`${p}: CID ${got.cid}, the checkpoint recorded ${cid}`)
    } catch (err) {
      problems.push(`${p}: cannot be read (${(err as Error).message.split('\n')[0]})`)
    }
  }
  try {
    if (lineage.manifest) await compare(lineage.manifest.path, lineage.manifest.cid)
    for (const f of lineage.files ?? []) await compare(f.path, f.cid)
  } finally {
    close()
  }
  return problems
}
