import http from 'node:http'
import https from 'node:https'
import tls from 'node:tls'
import { Readable } from 'node:stream'
import {
  S3Client,
  HeadObjectCommand,
  HeadBucketCommand,
  CreateBucketCommand,
  ListObjectsV2Command,
  GetObjectCommand,
  PutObjectCommand,
  CreateMultipartUploadCommand,
  UploadPartCommand,
  CompleteMultipartUploadCommand,
  AbortMultipartUploadCommand,
  ListMultipartUploadsCommand,
  DeleteObjectCommand,
  GetBucketVersioningCommand,
  ListObjectVersionsCommand,
  type S3ClientConfig,
} from '@aws-sdk/client-s3'
import { NodeHttpHandler } from '@smithy/node-http-handler'
import { HttpProxyAgent } from 'http-proxy-agent'
import { HttpsProxyAgent } from 'https-proxy-agent'
import { resolveConfig, type Credentials, type O3Config, type O3Flags } from './config.js'
import { O3IntegrityError, O3NotFoundError, O3StreamError, O3UsageError } from './errors.js'
import { checkPinned, ifMatchOf, sameEtag, type ObjectPin } from './etag.js'
import { LISTING_ENCODING, listedKey, nextKeyMarker } from './listing-keys.js'
import { checkRangeAnswer } from './range-answer.js'
import { DEFAULT_RETRY, isFinal, toO3Error, withRetry, type RetryPolicy } from './retry.js'
import { fullKey, fullPrefix, parseLocation, relativeKey, type Scope } from './scope.js'
import { silentLogger, type Logger } from '../log.js'

export interface O3ClientOptions extends O3Flags {
  /** Keep-alive sockets in the pool. */
  maxSockets?: number
  retry?: Partial<RetryPolicy>
  /** Time to establish a connection. */
  connectTimeoutMs?: number
  /** Longest silence on a socket (headers or body) before the request counts as failed. */
  requestTimeoutMs?: number
  logger?: Logger
  /** Resolved configuration, when the caller already has one; flags and env are then ignored. */
  config?: O3Config
}

export interface ObjectInfo {
  key: string
  size: number
  etag: string
  lastModified: Date
  contentType?: string
  metadata: Record<string, string>
  /** Akave's CID of the stored (encrypted, erasure-coded) form; never equal to a plaintext CID. */
  networkRootCid?: string
  /** Akave's commit state of the object, `done` once committed. */
  networkState?: string
  /** The version HEAD described, where the bucket is versioned. */
  versionId?: string
}

export type ListEntry = { type: 'object'; key: string; size: number; etag: string; lastModified: Date } | { type: 'prefix'; prefix: string }

export interface RangeOptions {
  /** First byte, inclusive. */
  start?: number
  /** Last byte, inclusive; omitted means to the end. */
  end?: number
  /** Fail with O3IntegrityError rather than read another version of the object than this one. */
  pin?: ObjectPin
  signal?: AbortSignal
}

export type { ObjectPin } from './etag.js'

export interface PutOptions {
  contentType?: string
  metadata?: Record<string, string>
  signal?: AbortSignal
}

export interface CompletedPart {
  partNumber: number
  etag: string
}

/**
 * What a write stored: its ETag and, where the bucket keeps versions, the id of the version it
 * made. `versionId` is absent where the bucket is unversioned and where the server names the
 * `null` version (a suspended bucket), which a later write replaces: it pins nothing for good.
 */
export interface StoredObject {
  etag: string
  versionId?: string
}

/** A bucket's versioning state: `unversioned` when it was never put under versioning. */
export type BucketVersioning = 'enabled' | 'suspended' | 'unversioned'

/** One version (or delete marker) of an object, as ListObjectVersions names it. */
export interface ObjectVersion {
  key: string
  /** `null` for the version written while the bucket was unversioned or suspended. */
  versionId: string
  isLatest: boolean
  deleteMarker: boolean
  /** 0 and '' for a delete marker. */
  size: number
  etag: string
  lastModified: Date
}

export interface O3Stats {
  requests: number
  retries: number
  errors: number
  bytesReceived: number
  bytesSent: number
}

// The SDK is pinned to a version that supports Node 20; its warning about future releases would
// only clutter every command's output.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true'

type RawHeaders = Record<string, string>
const RAW_HEADERS = Symbol('rawHeaders')

/** A version id that names one version for good (see StoredObject). */
function stableVersion(versionId: string | undefined): string | undefined {
  return versionId && versionId !== 'null' ? versionId : undefined
}

/**
 * https-proxy-agent starts the tunnel's TLS with the request's options alone, not the agent's, and
 * without the host it connects to (an IP endpoint is then checked as "localhost"): the CA bundle
 * and the check of the endpoint's own name are added here, so that the server is checked as it is
 * without a proxy.
 */
class TunnelAgent extends HttpsProxyAgent<string> {
  private readonly ca: string | undefined

  constructor(proxy: URL, options: https.AgentOptions & { ca?: string }) {
    super(proxy, options)
    this.ca = options.ca
  }

  override connect(req: http.ClientRequest, opts: Parameters<HttpsProxyAgent<string>['connect']>[1]): ReturnType<HttpsProxyAgent<string>['connect']> {
    if (!opts.secureEndpoint) return super.connect(req, opts)
    const host = opts.host ?? ''
    return super.connect(req, { ...opts, ...(this.ca && { ca: this.ca }), checkServerIdentity: (_name, cert) => tls.checkServerIdentity(host, cert) })
  }
}

/**
 * The one S3 client of the project, confined to a bucket and prefix. Every key it takes is
 * relative to that prefix and cannot escape it. Transient failures are retried with jittered
 * exponential backoff; ranged reads resume where a broken body stopped.
 */
export class O3Client {
  readonly scope: Scope
  readonly config: O3Config
  readonly stats: O3Stats = { requests: 0, retries: 0, errors: 0, bytesReceived: 0, bytesSent: 0 }
  private readonly s3: S3Client
  private readonly agent: http.Agent
  private readonly policy: RetryPolicy
  private readonly log: Logger

  /** Opens a client on `bucket[/prefix]`. No request is made until the first operation. */
  static open(location: string, options: O3ClientOptions = {}): O3Client {
    return new O3Client(parseLocation(location), options)
  }

  constructor(scope: Scope, options: O3ClientOptions = {}) {
    this.scope = scope
    this.config = options.config ?? resolveConfig(options)
    this.policy = { ...DEFAULT_RETRY, maxAttempts: this.config.maxAttempts, ...options.retry }
    this.log = options.logger ?? silentLogger
    const isHttps = this.config.endpoint.startsWith('https:')
    const agentOptions = { keepAlive: true, maxSockets: options.maxSockets ?? 16, maxFreeSockets: options.maxSockets ?? 16 }
    // A CA bundle replaces the system store, as it does for the native fetch engine (libcurl's CAINFO).
    // Through a proxy: a CONNECT tunnel for https (the server's certificate checked as without one),
    // absolute-URI requests for http, as curl sends them.
    const proxy = this.config.proxy
    if (isHttps) {
      const tlsOptions = { ...agentOptions, ca: this.config.caBundle?.pem }
      this.agent = proxy ? new TunnelAgent(proxy, tlsOptions) : new https.Agent(tlsOptions)
    } else {
      this.agent = proxy ? new HttpProxyAgent(proxy, agentOptions) : new http.Agent(agentOptions)
    }
    const s3Config: S3ClientConfig = {
      endpoint: this.config.endpoint,
      region: this.config.region,
      forcePathStyle: true,
      // O3 rejects the SDK's default CRC32 headers.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      // Retries are ours: one policy for every call, including resumed body reads.
      maxAttempts: 1,
      requestHandler: new NodeHttpHandler({
        httpAgent: isHttps ? undefined : this.agent,
        httpsAgent: isHttps ? (this.agent as https.Agent) : undefined,
        connectionTimeout: options.connectTimeoutMs ?? 5_000,
        requestTimeout: options.requestTimeoutMs ?? 30_000,
      }),
    }
    if (this.config.credentials) s3Config.credentials = this.config.credentials
    else if (this.config.profile) s3Config.profile = this.config.profile
    this.s3 = new S3Client(s3Config)
    // Akave's Network-Root-Cid / Network-State are plain response headers the SDK does not model.
    this.s3.middlewareStack.add(
      (next) => async (args) => {
        const result = await next(args)
        const headers = (result.response as { headers?: RawHeaders }).headers
        if (headers && result.output && typeof result.output === 'object') {
          Object.defineProperty(result.output, RAW_HEADERS, { value: headers, enumerable: false })
        }
        return result
      },
      { step: 'deserialize', name: 'o3RawHeaders' },
    )
  }

  /** `bucket/prefix` for messages. */
  get location(): string {
    return this.scope.prefix ? `${this.scope.bucket}/${this.scope.prefix}` : this.scope.bucket
  }

  private async call<T>(what: string, fn: (signal: AbortSignal | undefined) => Promise<T>, signal?: AbortSignal): Promise<T> {
    try {
      return await withRetry(
        this.policy,
        async () => {
          this.stats.requests++
          return await fn(signal)
        },
        {
          signal,
          onRetry: (err, attempt, delayMs) => {
            this.stats.retries++
            this.log.warn({ op: what, attempt, delayMs: Math.round(delayMs), code: (err as { name?: string }).name }, 'retrying O3 request')
          },
        },
      )
    } catch (err) {
      this.stats.errors++
      throw toO3Error(err, what, this.config.endpoint)
    }
  }

  /** Checks that the bucket exists and the credentials are accepted. */
  async checkBucket(signal?: AbortSignal): Promise<void> {
    await this.call(`bucket ${this.scope.bucket}`, (s) => this.s3.send(new HeadBucketCommand({ Bucket: this.scope.bucket }), { abortSignal: s }), signal)
  }

  /** Creates the bucket; one that already exists and is ours is fine. */
  async createBucket(signal?: AbortSignal): Promise<void> {
    try {
      await this.call(
        `create bucket ${this.scope.bucket}`,
        (s) => this.s3.send(new CreateBucketCommand({ Bucket: this.scope.bucket }), { abortSignal: s }),
        signal,
      )
    } catch (err) {
      if ((err as { cause?: { name?: string } }).cause?.name !== 'BucketAlreadyOwnedByYou') throw err
    }
  }

  /** The object's current version, or the one `versionId` names. */
  async head(key: string, signal?: AbortSignal, versionId?: string): Promise<ObjectInfo> {
    const Key = fullKey(this.scope, key)
    const out = await this.call(
      `head ${this.scope.bucket}/${Key}${versionId ? ` version ${versionId}` : ''}`,
      (s) => this.s3.send(new HeadObjectCommand({ Bucket: this.scope.bucket, Key, VersionId: versionId }), { abortSignal: s }),
      signal,
    )
    const raw = (out as unknown as { [RAW_HEADERS]?: RawHeaders })[RAW_HEADERS] ?? {}
    return {
      key,
      size: out.ContentLength ?? 0,
      etag: out.ETag ?? '',
      lastModified: out.LastModified ?? new Date(0),
      contentType: out.ContentType,
      metadata: out.Metadata ?? {},
      networkRootCid: raw['network-root-cid'],
      networkState: raw['network-state'],
      versionId: out.VersionId,
    }
  }

  /**
   * Lists objects (and, with a delimiter, common prefixes) under `prefix`, relative to the scope,
   * page by page as the caller iterates.
   */
  async *list(prefix = '', options: { delimiter?: string; signal?: AbortSignal } = {}): AsyncGenerator<ListEntry> {
    let token: string | undefined
    do {
      const page = await this.listPage(prefix, { ...options, token })
      yield* page.entries
      token = page.next
    } while (token)
  }

  /**
   * One page of the listing under `prefix`: from `token` (a previous page's `next`), or from the
   * first key that sorts after `prefix + startAfter`. `next` is absent on the last page.
   */
  async listPage(
    prefix: string,
    options: { delimiter?: string; startAfter?: string; token?: string; maxKeys?: number; signal?: AbortSignal } = {},
  ): Promise<{ entries: ListEntry[]; next?: string }> {
    const Prefix = fullPrefix(this.scope, prefix)
    // Only a position in the sort order, never an address: it needs no key checks.
    const StartAfter = options.startAfter ? `${Prefix}${options.startAfter}` : undefined
    const what = `list ${this.scope.bucket}/${Prefix}`
    const out = await this.call(
      what,
      (s) =>
        this.s3.send(
          new ListObjectsV2Command({
            Bucket: this.scope.bucket,
            Prefix,
            Delimiter: options.delimiter,
            ContinuationToken: options.token,
            StartAfter,
            MaxKeys: options.maxKeys,
            EncodingType: LISTING_ENCODING,
          }),
          { abortSignal: s },
        ),
      options.signal,
    )
    const listed = (value: string) => relativeKey(this.scope, listedKey(out.EncodingType, value, what))
    const entries: ListEntry[] = []
    for (const p of out.CommonPrefixes ?? []) if (p.Prefix) entries.push({ type: 'prefix', prefix: listed(p.Prefix) })
    for (const o of out.Contents ?? []) {
      if (!o.Key) continue
      entries.push({ type: 'object', key: listed(o.Key), size: o.Size ?? 0, etag: o.ETag ?? '', lastModified: o.LastModified ?? new Date(0) })
    }
    return { entries, next: out.IsTruncated ? out.NextContinuationToken : undefined }
  }

  /**
   * Opens one ranged GET and returns its body with the object's ETag, version and the bytes
   * promised; an answer that is not the asked range (checkRangeAnswer) is an O3StreamError, retried.
   */
  private async openRange(Key: string, start: number, end: number | undefined, pin: ObjectPin | undefined, signal?: AbortSignal) {
    const Range = `bytes=${start}-${end ?? ''}`
    const IfMatch = pin && ifMatchOf(pin)
    const out = await this.s3.send(new GetObjectCommand({ Bucket: this.scope.bucket, Key, Range, IfMatch, VersionId: pin?.versionId }), { abortSignal: signal })
    const body = out.Body as Readable
    const length = out.ContentLength ?? NaN
    const wrong = checkRangeAnswer(out.$metadata.httpStatusCode ?? 0, out.ContentRange, length, start, end)
    if (wrong) {
      body.destroy()
      throw new O3StreamError(`get ${this.scope.bucket}/${Key}: ${wrong.message}`)
    }
    return { body, etag: out.ETag ?? '', versionId: out.VersionId, length }
  }

  /**
   * A ranged GET as a stream. If the body dies midway, the read resumes from the last byte
   * received (pinned to the first response's ETag and version, so two versions are never mixed), within the
   * same retry policy as every other request.
   */
  getRange(key: string, options: RangeOptions = {}): Readable {
    return Readable.from(this.iterateRange(key, options), { objectMode: false, highWaterMark: 1 << 20 })
  }

  /** The chunks of getRange() without a stream around them, for consumers in this process. */
  iterateRange(key: string, options: RangeOptions = {}): AsyncGenerator<Buffer> {
    const Key = fullKey(this.scope, key)
    const start = options.start ?? 0
    if (options.end !== undefined && options.end < start) {
      throw new O3UsageError(`get ${this.scope.bucket}/${Key}: range end ${options.end} is before start ${start}`)
    }
    return this.rangeChunks(Key, start, options)
  }

  private async *rangeChunks(Key: string, start: number, options: RangeOptions): AsyncGenerator<Buffer> {
    const what = `get ${this.scope.bucket}/${Key}`
    let pos = start
    let pin = options.pin
    let expected: number | undefined
    let failures = 0
    for (;;) {
      const opened = await this.call(what, (s) => this.openRange(Key, pos, options.end, pin, s), options.signal)
      // Checked as well as sent: a server that ignores If-Match or VersionId must still not mix two versions.
      pin ??= { etag: opened.etag }
      try {
        checkPinned(pin, opened.etag, opened.versionId)
      } catch (err) {
        opened.body.destroy()
        this.stats.errors++
        throw new O3IntegrityError(`${what}: ${(err as Error).message}`)
      }
      expected ??= opened.length
      try {
        for await (const chunk of opened.body) {
          const buf = chunk as Buffer
          pos += buf.length
          this.stats.bytesReceived += buf.length
          failures = 0
          yield buf
        }
        if (pos - start !== expected) throw new O3StreamError(`${what}: body ended after ${pos - start} of ${expected} bytes`)
        return
      } catch (err) {
        opened.body.destroy()
        if (isFinal(err) || options.signal?.aborted || ++failures >= this.policy.maxAttempts) {
          this.stats.errors++
          throw toO3Error(err, what, this.config.endpoint)
        }
        this.stats.retries++
        this.log.warn({ op: what, received: pos - start, code: (err as { code?: string }).code }, 'ranged GET body broke; resuming')
      }
    }
  }

  /** Reads `[start, end]` (inclusive) into one buffer; shorter only where the object ends first. */
  async getBytes(key: string, start: number, end: number, options: Omit<RangeOptions, 'start' | 'end'> = {}): Promise<Buffer> {
    const chunks: Buffer[] = []
    for await (const c of this.iterateRange(key, { ...options, start, end })) chunks.push(c)
    return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)
  }

  /** PUT of a whole object held in memory, retried under the client's policy. */
  async put(key: string, body: Buffer | Uint8Array | string, options: PutOptions = {}): Promise<StoredObject> {
    const Key = fullKey(this.scope, key)
    const Body = typeof body === 'string' ? Buffer.from(body) : body
    const out = await this.call(
      `put ${this.scope.bucket}/${Key}`,
      (s) =>
        this.s3.send(
          new PutObjectCommand({
            Bucket: this.scope.bucket,
            Key,
            Body,
            ContentLength: Body.length,
            ContentType: options.contentType,
            Metadata: options.metadata,
          }),
          { abortSignal: s },
        ),
      options.signal,
    )
    this.stats.bytesSent += Body.length
    return { etag: out.ETag ?? '', versionId: stableVersion(out.VersionId) }
  }

  async createMultipartUpload(key: string, options: PutOptions = {}): Promise<string> {
    const Key = fullKey(this.scope, key)
    const out = await this.call(
      `create upload ${this.scope.bucket}/${Key}`,
      (s) =>
        this.s3.send(new CreateMultipartUploadCommand({ Bucket: this.scope.bucket, Key, ContentType: options.contentType, Metadata: options.metadata }), {
          abortSignal: s,
        }),
      options.signal,
    )
    if (!out.UploadId) throw new O3StreamError(`create upload ${this.scope.bucket}/${Key}: the server returned no upload id`)
    return out.UploadId
  }

  async uploadPart(key: string, uploadId: string, partNumber: number, body: Buffer, signal?: AbortSignal): Promise<CompletedPart> {
    const Key = fullKey(this.scope, key)
    const out = await this.call(
      `upload part ${partNumber} of ${this.scope.bucket}/${Key}`,
      (s) =>
        this.s3.send(
          new UploadPartCommand({ Bucket: this.scope.bucket, Key, UploadId: uploadId, PartNumber: partNumber, Body: body, ContentLength: body.length }),
          { abortSignal: s },
        ),
      signal,
    )
    this.stats.bytesSent += body.length
    return { partNumber, etag: out.ETag ?? '' }
  }

  /**
   * Completes the upload. Where the completion names no version (Swift's s3api never does), HEAD
   * names it, taken only when HEAD's ETag is the completion's: else another write came in between
   * and the version stays unknown.
   */
  async completeMultipartUpload(key: string, uploadId: string, parts: CompletedPart[], signal?: AbortSignal): Promise<StoredObject> {
    const Key = fullKey(this.scope, key)
    const sorted = [...parts].sort((a, b) => a.partNumber - b.partNumber)
    const out = await this.call(
      `complete upload ${this.scope.bucket}/${Key}`,
      (s) =>
        this.s3.send(
          new CompleteMultipartUploadCommand({
            Bucket: this.scope.bucket,
            Key,
            UploadId: uploadId,
            MultipartUpload: { Parts: sorted.map((p) => ({ PartNumber: p.partNumber, ETag: p.etag })) },
          }),
          { abortSignal: s },
        ),
      signal,
    )
    const etag = out.ETag ?? ''
    const versionId = stableVersion(out.VersionId)
    if (versionId) return { etag, versionId }
    const head = await this.head(key, signal)
    return { etag, versionId: sameEtag(head.etag, etag) ? stableVersion(head.versionId) : undefined }
  }

  async abortMultipartUpload(key: string, uploadId: string): Promise<void> {
    const Key = fullKey(this.scope, key)
    await this.call(`abort upload ${this.scope.bucket}/${Key}`, (s) =>
      this.s3.send(new AbortMultipartUploadCommand({ Bucket: this.scope.bucket, Key, UploadId: uploadId }), { abortSignal: s }),
    )
  }

  /** Multipart uploads in progress under `prefix` (relative to the scope). */
  async *listMultipartUploads(prefix = ''): AsyncGenerator<{ key: string; uploadId: string; initiated?: Date }> {
    const Prefix = fullPrefix(this.scope, prefix)
    let keyMarker: string | undefined
    let uploadIdMarker: string | undefined
    const what = `list uploads ${this.scope.bucket}/${Prefix}`
    do {
      const out = await this.call(what, (s) =>
        this.s3.send(
          new ListMultipartUploadsCommand({
            Bucket: this.scope.bucket,
            Prefix,
            KeyMarker: keyMarker,
            UploadIdMarker: uploadIdMarker,
            EncodingType: LISTING_ENCODING,
          }),
          { abortSignal: s },
        ),
      )
      let last: { key: string; uploadId: string } | undefined
      for (const u of out.Uploads ?? []) {
        if (!u.Key || !u.UploadId) continue
        last = { key: listedKey(out.EncodingType, u.Key, what), uploadId: u.UploadId }
        yield { key: relativeKey(this.scope, last.key), uploadId: u.UploadId, initiated: u.Initiated }
      }
      keyMarker = out.IsTruncated ? nextKeyMarker(last?.key, out.EncodingType, out.NextKeyMarker, what) : undefined
      uploadIdMarker = out.IsTruncated ? (last?.uploadId ?? out.NextUploadIdMarker) : undefined
    } while (keyMarker)
  }

  /** Deletes the object; in a versioned bucket that only adds a delete marker (see deleteVersion). */
  async delete(key: string): Promise<void> {
    const Key = fullKey(this.scope, key)
    await this.call(`delete ${this.scope.bucket}/${Key}`, (s) => this.s3.send(new DeleteObjectCommand({ Bucket: this.scope.bucket, Key }), { abortSignal: s }))
  }

  /** Deletes one version (or delete marker) for good; one already gone is not an error. */
  async deleteVersion(key: string, versionId: string, signal?: AbortSignal): Promise<void> {
    const Key = fullKey(this.scope, key)
    try {
      await this.call(
        `delete ${this.scope.bucket}/${Key} version ${versionId}`,
        (s) => this.s3.send(new DeleteObjectCommand({ Bucket: this.scope.bucket, Key, VersionId: versionId }), { abortSignal: s }),
        signal,
      )
    } catch (err) {
      if (!(err instanceof O3NotFoundError)) throw err
    }
  }

  /** Whether the bucket keeps versions (GetBucketVersioning). */
  async bucketVersioning(signal?: AbortSignal): Promise<BucketVersioning> {
    const out = await this.call(
      `versioning of ${this.scope.bucket}`,
      (s) => this.s3.send(new GetBucketVersioningCommand({ Bucket: this.scope.bucket }), { abortSignal: s }),
      signal,
    )
    return out.Status === 'Enabled' ? 'enabled' : out.Status === 'Suspended' ? 'suspended' : 'unversioned'
  }

  /**
   * Every version and delete marker of the objects under `prefix` (relative to the scope), each
   * once, by key, page by page as the caller iterates. Within a page a key's versions (newest first)
   * come before its delete markers: S3 answers them in two lists, so how they interleave is lost.
   */
  async *listVersions(prefix = '', options: { signal?: AbortSignal; maxKeys?: number } = {}): AsyncGenerator<ObjectVersion> {
    const Prefix = fullPrefix(this.scope, prefix)
    let keyMarker: string | undefined
    let versionMarker: string | undefined
    // Versions of the page's last key already yielded: a continuation may repeat some (see below).
    let seen = new Set<string>()
    const what = `list versions ${this.scope.bucket}/${Prefix}`
    for (;;) {
      const out = await this.call(
        what,
        (s) =>
          this.s3.send(
            new ListObjectVersionsCommand({
              Bucket: this.scope.bucket,
              Prefix,
              KeyMarker: keyMarker,
              VersionIdMarker: versionMarker,
              MaxKeys: options.maxKeys,
              EncodingType: LISTING_ENCODING,
            }),
            { abortSignal: s },
          ),
        options.signal,
      )
      const listed = (value: string) => listedKey(out.EncodingType, value, what)
      const page: ObjectVersion[] = []
      for (const v of out.Versions ?? []) {
        if (v.Key && v.VersionId)
          page.push({
            key: listed(v.Key),
            versionId: v.VersionId,
            isLatest: v.IsLatest === true,
            deleteMarker: false,
            size: v.Size ?? 0,
            etag: v.ETag ?? '',
            lastModified: v.LastModified ?? new Date(0),
          })
      }
      for (const m of out.DeleteMarkers ?? []) {
        if (m.Key && m.VersionId)
          page.push({
            key: listed(m.Key),
            versionId: m.VersionId,
            isLatest: m.IsLatest === true,
            deleteMarker: true,
            size: 0,
            etag: '',
            lastModified: m.LastModified ?? new Date(0),
          })
      }
      // A stable sort: by key, each list keeping the server's order.
      page.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
      for (const v of page) {
        const id = `${v.key}\0${v.versionId}`
        if (seen.has(id)) continue
        seen.add(id)
        yield { ...v, key: relativeKey(this.scope, v.key) }
      }
      const next = out.IsTruncated ? nextKeyMarker(page.at(-1)?.key, out.EncodingType, out.NextKeyMarker, what) : undefined
      if (next === undefined) return
      if (next !== keyMarker) seen = new Set([...seen].filter((id) => id.startsWith(`${next}\0`)))
      keyMarker = next
      versionMarker = out.NextVersionIdMarker
      // Swift 2.30's s3api names `null` as the next version marker whatever the page's last
      // version was (it reads a field its listing does not have), which would skip the rest of that
      // key's versions. Where the key has no null version in the page, continue from one of its
      // versions there instead: the page splits versions from delete markers, so which came last
      // is unknown, and the one picked may make the next page repeat a few (skipped above).
      const ofKey = page.filter((v) => v.key === keyMarker)
      if ((versionMarker === undefined || versionMarker === 'null') && ofKey.length > 0 && !ofKey.some((v) => v.versionId === 'null')) {
        versionMarker = ofKey[ofKey.length - 1]!.versionId
      }
    }
  }

  /**
   * The keys requests are signed with, resolved as the SDK does (static keys, else the AWS chain:
   * variables, profiles): for a signer outside the SDK (the mount's native fetch engine). The SDK
   * keeps temporary ones until 5 minutes before they expire, then resolves new ones.
   */
  async credentials(): Promise<Credentials> {
    const c = await this.s3.config.credentials()
    return { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey, sessionToken: c.sessionToken, expiration: c.expiration }
  }

  /**
   * What the SDK adds to this machine's clock when it signs: 0, or the server's clock minus ours
   * once a request was refused as signed 5 minutes or more off (the SDK then signs it again).
   */
  get clockOffsetMs(): number {
    return this.s3.config.systemClockOffset ?? 0
  }

  /** Closes the connection pool. */
  close(): void {
    this.s3.destroy()
    this.agent.destroy()
  }
}
