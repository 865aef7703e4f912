import { X509Certificate } from 'node:crypto'
import { resolve } from 'node:path'
import { readUserFile } from '../read-user-file.js'
import { O3ConfigError } from './errors.js'
import { proxyFor, shownProxy } from './proxy.js'
import { DEFAULT_RETRY } from './retry.js'

export const DEFAULT_ENDPOINT = 'https://o3-rc2.akave.xyz'
export const DEFAULT_REGION = 'akave-network'

/** What a command line may set. Secrets are not among them: they come from the environment or a file. */
export interface O3Flags {
  endpoint?: string
  region?: string
  /** A file of `O3_ACCESS_KEY_ID=...` / `O3_SECRET_ACCESS_KEY=...` lines. */
  credentialsFile?: string
  /** An AWS shared-config profile name. */
  profile?: string
  /** A PEM file of the CA certificates to trust for HTTPS, instead of the system store. */
  caBundle?: string
  /** Attempts per request, the first included (a string, as a command line gives it). */
  maxAttempts?: string
}

export interface Credentials {
  accessKeyId: string
  secretAccessKey: string
  sessionToken?: string
  /** When temporary credentials stop being valid; static keys have none. */
  expiration?: Date
}

export interface O3Config {
  endpoint: string
  region: string
  /** Static keys, or undefined to let the AWS SDK's chain (AWS_* variables, profiles) find them. */
  credentials?: Credentials
  profile?: string
  /**
   * The CA bundle HTTPS trusts instead of the system store: its absolute path (what the native
   * fetch engine is given) and its PEM text (what the SDK's https agent is given), checked to hold
   * certificates. Undefined: the system store.
   */
  caBundle?: { path: string; pem: string }
  /** Attempts per request, the first included, on every path: the SDK client's and the native engine's. */
  maxAttempts: number
  /** The HTTP proxy requests go through (lib/o3/proxy.ts; from the process environment), or undefined: direct. */
  proxy?: URL
  /** Where each setting came from, for a start-up log line that shows no secret. */
  sources: { endpoint: string; region: string; credentials: string; caBundle: string; maxAttempts: string; proxy: string }
}

/** Twenty already keep a reader waiting minutes on a server that is gone (each wait doubles, up to 10-20 s). */
const MAX_ATTEMPTS_LIMIT = 20

type Env = Record<string, string | undefined>

function readKeyFile(path: string): Env {
  const text = readUserFile(path, 'credentials file', (message) => new O3ConfigError(message))
  const out: Env = {}
  for (const line of text.split('\n')) {
    const m = /^\s*(?:export\s+)?([A-Z0-9_]+)\s*=\s*"?([^"\n]*?)"?\s*$/.exec(line)
    if (m) out[m[1]!] = m[2]
  }
  return out
}

function staticCredentials(env: Env): Credentials | undefined {
  const id = env.O3_ACCESS_KEY_ID
  const secret = env.O3_SECRET_ACCESS_KEY
  if (id === undefined && secret === undefined) return undefined
  if (!id || !secret) {
    throw new O3ConfigError('O3_ACCESS_KEY_ID and O3_SECRET_ACCESS_KEY must be set together; set both or neither')
  }
  return { accessKeyId: id, secretAccessKey: secret, sessionToken: env.O3_SESSION_TOKEN || undefined }
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g

/**
 * Whether a PEM block's body is one DER SEQUENCE whose length is the whole block, as an X.509
 * certificate is: catches a truncated or corrupted block in microseconds, where parsing every
 * certificate of a system bundle (some 150) takes a noticeable part of a second.
 */
function isDerSequence(body: string): boolean {
  const b64 = body.replace(/\s+/g, '')
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) return false
  const der = Buffer.from(b64, 'base64')
  if (der.length < 2 || der[0] !== 0x30) return false
  const first = der[1]!
  if (first < 0x80) return 2 + first === der.length
  const octets = first & 0x7f
  if (octets === 0 || octets > 4 || der.length < 2 + octets) return false
  let length = 0
  for (let i = 0; i < octets; i++) length = length * 256 + der[2 + i]!
  return 2 + octets + length === der.length
}

/** Reads a CA bundle and checks that it is PEM certificates; else one line saying what is wrong. */
function readCaBundle(path: string, from: string): { path: string; pem: string } {
  const what = `CA bundle (from ${from})`
  const pem = readUserFile(path, what, (message) => new O3ConfigError(message))
  const blocks = [...pem.matchAll(PEM_CERTIFICATE)]
  if (blocks.length === 0) {
    throw new O3ConfigError(
      `${what} ${path} holds no PEM certificate; give a file of -----BEGIN CERTIFICATE----- blocks (the CA that signed the server's certificate)`,
    )
  }
  const broken = blocks.findIndex((m) => !isDerSequence(m[1]!))
  if (broken >= 0) throw new O3ConfigError(`${what} ${path}: certificate ${broken + 1} of ${blocks.length} is not a DER certificate (truncated or corrupted)`)
  try {
    // The first in full: the file really is certificates (not, say, a key in a certificate's armour).
    new X509Certificate(blocks[0]![0])
  } catch (err) {
    throw new O3ConfigError(`${what} ${path}: certificate 1 of ${blocks.length} cannot be parsed (${(err as Error).message})`)
  }
  return { path: resolve(path), pem }
}

/**
 * Resolves endpoint, region, credentials, CA bundle and attempts per request: flags, then O3_*, then
 * AWS_* and profiles, then defaults. The proxy comes from the process environment, as every HTTP
 * client there reads it.
 */
export function resolveConfig(flags: O3Flags = {}, env: Env = process.env): O3Config {
  const pick = (...c: [string | undefined, string][]): [string, string] | undefined => {
    for (const [v, src] of c) if (v) return [v, src]
    return undefined
  }
  const [endpoint, endpointSrc] = pick(
    [flags.endpoint, '--endpoint'],
    [env.O3_ENDPOINT, 'O3_ENDPOINT'],
    [env.AWS_ENDPOINT_URL_S3, 'AWS_ENDPOINT_URL_S3'],
    [env.AWS_ENDPOINT_URL, 'AWS_ENDPOINT_URL'],
  ) ?? [DEFAULT_ENDPOINT, 'default']
  let url: URL
  try {
    url = new URL(endpoint)
  } catch {
    throw new O3ConfigError(`endpoint ${JSON.stringify(endpoint)} (from ${endpointSrc}) is not a URL; use e.g. ${DEFAULT_ENDPOINT}`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new O3ConfigError(`endpoint ${endpoint} (from ${endpointSrc}) must be http:// or https://`)
  }
  const [region, regionSrc] = pick(
    [flags.region, '--region'],
    [env.O3_REGION, 'O3_REGION'],
    [env.AWS_REGION, 'AWS_REGION'],
    [env.AWS_DEFAULT_REGION, 'AWS_DEFAULT_REGION'],
  ) ?? [DEFAULT_REGION, 'default']

  const fileFromEnv = env.O3_CREDENTIALS_FILE
  const file = flags.credentialsFile ?? fileFromEnv
  let credentials: Credentials | undefined
  let credSrc: string
  if (file) {
    credentials = staticCredentials(readKeyFile(file))
    if (!credentials) throw new O3ConfigError(`credentials file ${file} has no O3_ACCESS_KEY_ID / O3_SECRET_ACCESS_KEY lines`)
    credSrc = flags.credentialsFile ? '--credentials-file' : 'O3_CREDENTIALS_FILE'
  } else {
    credentials = staticCredentials(env)
    credSrc = credentials ? 'O3_ACCESS_KEY_ID' : flags.profile ? `profile ${flags.profile}` : 'AWS default chain'
  }
  const ca = pick([flags.caBundle, '--ca-bundle'], [env.O3_CA_BUNDLE, 'O3_CA_BUNDLE'], [env.AWS_CA_BUNDLE, 'AWS_CA_BUNDLE'])
  // AWS_MAX_ATTEMPTS is the AWS SDKs' own name for it (mountpoint-s3 reads it too).
  const [attempts, attemptsSrc] = pick(
    [flags.maxAttempts, '--max-attempts'],
    [env.O3_MAX_ATTEMPTS, 'O3_MAX_ATTEMPTS'],
    [env.AWS_MAX_ATTEMPTS, 'AWS_MAX_ATTEMPTS'],
  ) ?? [String(DEFAULT_RETRY.maxAttempts), 'default']
  const proxy = proxyFor(url.toString())
  const maxAttempts = Number(attempts)
  if (!/^\d+$/.test(attempts.trim()) || maxAttempts < 1 || maxAttempts > MAX_ATTEMPTS_LIMIT) {
    throw new O3ConfigError(
      `attempts per request ${JSON.stringify(attempts)} (from ${attemptsSrc}) must be a whole number from 1 to ${MAX_ATTEMPTS_LIMIT}; the default is ${DEFAULT_RETRY.maxAttempts}`,
    )
  }
  return {
    endpoint: url.toString().replace(/\/$/, ''),
    region,
    credentials,
    profile: flags.profile,
    caBundle: ca && readCaBundle(ca[0], ca[1]),
    maxAttempts,
    proxy,
    sources: {
      endpoint: endpointSrc,
      region: regionSrc,
      credentials: credSrc,
      caBundle: ca ? ca[1] : 'system store',
      maxAttempts: attemptsSrc,
      proxy: proxy ? shownProxy(proxy) : 'none',
    },
  }
}
