import { readUserFile } from '../read-user-file.js'
import { O3ConfigError } from './errors.js'

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
}

export interface Credentials {
  accessKeyId: string
  secretAccessKey: string
  sessionToken?: string
}

export interface O3Config {
  endpoint: string
  region: string
  /** Static keys, or undefined to let the AWS SDK's chain (AWS_* variables, profiles) find them. */
  credentials?: Credentials
  profile?: string
  /** Where each setting came from, for a start-up log line that shows no secret. */
  sources: { endpoint: string; region: string; credentials: string }
}

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

/** Resolves endpoint, region and credentials: flags, then O3_*, then AWS_* and profiles, then defaults. */
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
  return {
    endpoint: url.toString().replace(/\/$/, ''),
    region,
    credentials,
    profile: flags.profile,
    sources: { endpoint: endpointSrc, region: regionSrc, credentials: credSrc },
  }
}
