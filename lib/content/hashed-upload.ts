import { silentLogger, type Logger } from '../log.js'
import type { O3Client } from '../o3/client.js'
import { MultipartSink } from '../o3/multipart.js'
import type { ContentDigest } from './cid.js'
import { ThreadHasher } from './thread-hasher.js'

/** O3 prefers large parts; 4 in flight keep a link busy with memory bounded by 80 MiB. */
export const DEFAULT_PART_SIZE = 16 << 20
export const DEFAULT_PARALLEL = 4

export interface HashedUploadOptions {
  /** Multipart part size in bytes; content no larger than one part goes as a single PUT. */
  partSize?: number
  /** Parts uploading at once. Peak extra memory is partSize x (parallel + 1). */
  parallel?: number
  signal?: AbortSignal
  contentType?: string
  /** Runs after each stored part of a multipart upload. */
  onPartStored?: (partNumber: number) => void
  logger?: Logger
  /**
   * Receives, once the upload is done, the hex sha256 of each 1 MiB leaf of the CID, in order, and
   * the DAG's cumulative size (what a UnixFS directory's link to the content records as Tsize).
   */
  onDag?: (dag: { leaves: readonly string[]; dagSize: number }) => void
}

/**
 * Stores `content` (`size` bytes, chunk by chunk) at `key` while its CID and sha256 are computed
 * on a worker thread from a copy of the same buffers, and returns that digest. Content that fits in one part is sent as one PUT;
 * larger content streams into a multipart upload, which any failure (a cancelled `signal`
 * included) aborts, so that no parts stay behind. Chunks must stay unchanged until this settles:
 * parts are sent from them where they can be.
 */
export async function hashedUpload(
  client: O3Client,
  key: string,
  content: Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  size: number,
  options: HashedUploadOptions = {},
): Promise<ContentDigest> {
  const { partSize = DEFAULT_PART_SIZE, parallel = DEFAULT_PARALLEL, signal, contentType } = options
  const hasher = new ThreadHasher()
  try {
    if (size <= partSize) {
      const chunks: Uint8Array[] = []
      for await (const c of content) chunks.push(c)
      const body = Buffer.concat(chunks)
      await Promise.all([hasher.update(body), client.put(key, body, { contentType, signal })])
    } else {
      await multipart(client, key, content, hasher, { ...options, partSize, parallel })
    }
    return await finish(hasher, options)
  } catch (err) {
    hasher.abort()
    throw err
  }
}

async function multipart(
  client: O3Client,
  key: string,
  content: Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  hasher: ThreadHasher,
  options: HashedUploadOptions & { partSize: number; parallel: number },
): Promise<void> {
  const { partSize, parallel, signal, contentType } = options
  const sink = await MultipartSink.open(client, key, {
    partSize,
    parallel,
    signal,
    contentType,
    tap: (part) => hasher.update(part),
    onPartStored: options.onPartStored,
  })
  try {
    for await (const c of content) await sink.write(c)
    // finish() hands the last part to the hasher, so the caller's digest() must come after it.
    await sink.finish()
  } catch (err) {
    const log = options.logger ?? silentLogger
    await sink
      .abort(err)
      .catch((abortErr: Error) =>
        log.error({ key, err: abortErr.message }, 'could not abort the multipart upload; its parts stay on the server until it is aborted'),
      )
    throw err
  }
}

async function finish(hasher: ThreadHasher, options: HashedUploadOptions): Promise<ContentDigest> {
  const digest = await hasher.digest()
  options.onDag?.({ leaves: hasher.leafDigests, dagSize: hasher.dagSize })
  return digest
}
