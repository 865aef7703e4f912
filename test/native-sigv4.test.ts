// The mount core's SigV4 signer (cpp/mount/sigv4_signer.cpp, through the request builder the fetch
// engine uses) against the AWS SDK's own: @smithy/signature-v4 configured as lib/o3/lean-get.ts
// configures it, and the path and query the SDK's S3 client serialises for the same GetObject.
// Fixed inputs, fixed time; keys with spaces, unicode, '+', '%', '~', the characters
// encodeURIComponent leaves alone, a version id with '/' and '+', a session token.
import { createHash, createHmac } from 'node:crypto'
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3'
import { SignatureV4 } from '@smithy/signature-v4'
import type { HttpRequest, SourceData } from '@smithy/types'
import t from 'tap'
import { buildNativeTools, run, toolEnv, toolPath } from './support/native-tools.js'

const bytes = (d: SourceData): Uint8Array | string =>
  typeof d === 'string' ? d : ArrayBuffer.isView(d) ? new Uint8Array(d.buffer, d.byteOffset, d.byteLength) : new Uint8Array(d)

class Sha256 {
  private readonly h
  constructor(secret?: SourceData) {
    this.h = secret ? createHmac('sha256', bytes(secret)) : createHash('sha256')
  }
  update(data: SourceData): void {
    this.h.update(bytes(data))
  }
  digest(): Promise<Uint8Array> {
    return Promise.resolve(this.h.digest())
  }
}

interface Case {
  name: string
  endpoint: string
  bucket: string
  key: string
  first: number
  last: number
  etag?: string
  versionId?: string
  sessionToken?: string
}

const CREDS = { accessKeyId: 'test:tester', secretAccessKey: 'testing/Secret+Key=' }
const TIME = Date.UTC(2026, 11, 4, 23, 59, 58) / 1000

const cases: Case[] = [
  { name: 'a plain key and range', endpoint: 'http://127.0.0.1:8080', bucket: 'b', key: 'data/file.bin', first: 0, last: 1048575 },
  { name: 'spaces, unicode, + % ~', endpoint: 'http://127.0.0.1:8080', bucket: 'b', key: 'dir/a b+c%d~e ü€ 日本.bin', first: 5, last: 5, etag: 'abc123' },
  { name: "!'()* = & ? # ; , : @ $", endpoint: 'http://127.0.0.1:9', bucket: 'bucket-1', key: "x/!'()*=&?#;,:@$.txt", first: 0, last: 0 },
  {
    name: 'a version id with / and +',
    endpoint: 'http://127.0.0.1:8080',
    bucket: 'b',
    key: 'k',
    first: 10,
    last: 20,
    etag: 'e-2',
    versionId: '3/L4kqtJlcp+XroDTDmJ+rmSpXd3dIbrHY=',
  },
  {
    name: 'a session token',
    endpoint: 'http://127.0.0.1:8080',
    bucket: 'b',
    key: 'k/',
    first: 1,
    last: 2,
    sessionToken: 'FwoGZXIvYXdzEJr//////////wEaD+token=',
  },
  { name: 'https on its default port, a path prefix', endpoint: 'https://o3.example.com:443/s3', bucket: 'b', key: 'a//b/./c/../d', first: 0, last: 99 },
]

/** The path and query the SDK's S3 client sends for this GetObject (captured before signing). */
async function sdkRequest(c: Case): Promise<HttpRequest> {
  const client = new S3Client({
    endpoint: c.endpoint,
    region: 'akave-network',
    credentials: CREDS,
    forcePathStyle: true,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  })
  let captured: HttpRequest | undefined
  client.middlewareStack.add(
    () => async (args) => {
      captured = args.request as HttpRequest
      throw new Error('captured')
    },
    { step: 'build', priority: 'low', name: 'capture' },
  )
  await client.send(new GetObjectCommand({ Bucket: c.bucket, Key: c.key, Range: `bytes=${c.first}-${c.last}`, VersionId: c.versionId })).catch((err: Error) => {
    if (err.message !== 'captured') throw err
  })
  client.destroy()
  if (!captured) throw new Error('the SDK built no request')
  return captured
}

await buildNativeTools()

for (const c of cases) {
  t.test(c.name, async (t) => {
    const args = ['--endpoint', c.endpoint, '--region', 'akave-network', '--bucket', c.bucket, '--key', c.key]
    args.push('--first', String(c.first), '--last', String(c.last), '--time', String(TIME))
    if (c.etag) args.push('--etag', c.etag)
    if (c.versionId) args.push('--version-id', c.versionId)
    const env = toolEnv({ O3_ACCESS_KEY_ID: CREDS.accessKeyId, O3_SECRET_ACCESS_KEY: CREDS.secretAccessKey, O3_SESSION_TOKEN: c.sessionToken })
    const r = await run(toolPath('sigv4_tool'), args, { env })
    t.equal(r.code, 0, r.stderr)
    const native = JSON.parse(r.stdout) as { url: string; headers: Record<string, string> }

    const sdk = await sdkRequest(c)
    // The SDK adds x-id=GetObject for its own bookkeeping; the engine does not send it.
    const query = Object.fromEntries(Object.entries(sdk.query ?? {}).filter(([k]) => k !== 'x-id')) as Record<string, string>
    const url = new URL(native.url)
    // Not url.pathname: a URL object removes dot segments, which S3 keys keep (and the engine sends).
    const [path, search = ''] = native.url.replace(/^https?:\/\/[^/]+/, '').split('?')
    t.equal(path, sdk.path, 'the path is encoded as the SDK encodes it')
    t.same(Object.fromEntries(new URLSearchParams(search)), query, 'the same query')

    const signer = new SignatureV4({
      credentials: { ...CREDS, sessionToken: c.sessionToken },
      region: 'akave-network',
      service: 's3',
      sha256: Sha256,
      uriEscapePath: false,
      applyChecksum: false,
    })
    const headers: Record<string, string> = {
      host: url.host,
      range: `bytes=${c.first}-${c.last}`,
      'x-amz-content-sha256': native.headers['x-amz-content-sha256']!,
    }
    if (c.etag) headers['if-match'] = `"${c.etag}"`
    const signed = await signer.sign(
      { method: 'GET', protocol: url.protocol, hostname: url.hostname, port: url.port ? Number(url.port) : undefined, path, query, headers },
      { signingDate: new Date(TIME * 1000) },
    )
    t.equal(native.headers['x-amz-content-sha256'], createHash('sha256').digest('hex'), 'the sha256 of the empty body')
    t.equal(native.headers['x-amz-date'], signed.headers['x-amz-date'])
    t.equal(native.headers['x-amz-security-token'], signed.headers['x-amz-security-token'])
    t.equal(native.headers.host, url.host, 'Host as the URL names it (no default port)')
    t.equal(native.headers.authorization, signed.headers.authorization, 'the same Authorization')
  })
}
