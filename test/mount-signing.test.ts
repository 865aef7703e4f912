// What the mount signs its requests with, on both its paths (the SDK's for metadata, the native
// engine's for bytes). Temporary credentials that expire while the mount lives (a profile's
// credential_process here, standing in for SSO, web identity on Kubernetes, container and instance
// roles): asked for again before they expire, and reads sign with the new ones. And a machine whose
// clock is off from the server's: signatures follow the server's clock, as the AWS SDKs' do.
// Swift's tempauth has no session tokens and shares this machine's clock, so the lying server in
// front of it plays both (403 ExpiredToken for a token it was told has expired; 403
// RequestTimeTooSkewed with its own Date when its clock is set apart). Real S3 server, real FUSE
// mount, the AWS SDK's own credential_process provider.
import { createHash, randomBytes } from 'node:crypto'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { startLyingS3, type LyingS3 } from './support/lying-s3.js'
import { freshStats, logWhen, mount } from './support/o3mount.js'

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const BUCKET = `mount-creds-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())

/** Two objects in `dir`, and a lying server in front of the real one for this test. */
async function setUp(t: Test, dir: string): Promise<{ first: Buffer; second: Buffer; lying: LyingS3 }> {
  const first = randomBytes(256 << 10)
  const second = randomBytes(256 << 10)
  await client.put(`${dir}/first.bin`, first)
  await client.put(`${dir}/second.bin`, second)
  const lying = await startLyingS3({ target: info.endpoint, objectBytes: () => undefined })
  t.teardown(() => lying.close())
  return { first, second, lying }
}

t.test('temporary credentials are refreshed before they expire, and the reads after sign with the new ones', async (t) => {
  const { first, second, lying } = await setUp(t, 'creds')

  // The process answers the server's keys with the session token in `token`, valid for 301 s:
  // within the SDK's 5 minutes of expiry at once, so the mount asks again about every second.
  const dir = mkdtempSync(path.join(tmpdir(), 'o3mount-creds-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const tokenFile = path.join(dir, 'token')
  writeFileSync(tokenFile, 'token-A')
  const process = path.join(dir, 'credential-process')
  writeFileSync(
    process,
    `#!/bin/sh
printf '{"Version":1,"AccessKeyId":"%s","SecretAccessKey":"%s","SessionToken":"%s","Expiration":"%s"}' \\
  '${info.accessKeyId}' '${info.secretAccessKey}' "$(cat '${tokenFile}')" "$(date -u -d '+301 seconds' +%Y-%m-%dT%H:%M:%SZ)"
`,
  )
  chmodSync(process, 0o700)
  const config = path.join(dir, 'config')
  writeFileSync(config, `[profile rotating]\ncredential_process = ${process}\n`)

  const m = await mount(t, info, BUCKET, {
    env: {
      O3_ENDPOINT: lying.endpoint,
      O3_ACCESS_KEY_ID: undefined,
      O3_SECRET_ACCESS_KEY: undefined,
      AWS_PROFILE: 'rotating',
      AWS_CONFIG_FILE: config,
      AWS_SHARED_CREDENTIALS_FILE: path.join(dir, 'none'),
    },
  })
  t.match(m.log(), /"credentialsFrom":"AWS default chain"/, 'no static keys: the AWS chain found the profile')
  t.equal(sha256(await readFile(path.join(m.mountpoint, 'creds/first.bin'))), sha256(first), 'read with the first token')
  t.same(lying.tokens, ['token-A'])

  writeFileSync(tokenFile, 'token-B')
  t.match(await logWhen(m, /credentials refreshed/), /credentials refreshed/, 'the mount took the new credentials')
  lying.expire('token-A')
  // An object the mount has not read: its lookup (the SDK) and its GET (the native engine) both go out now.
  t.equal(sha256(await readFile(path.join(m.mountpoint, 'creds/second.bin'))), sha256(second), 'read after token-A expired')
  t.same(lying.tokens, ['token-A', 'token-B'], 'signed with the new token')
  t.notMatch(m.log(), /token-[AB]/, 'session tokens are never logged')
  t.notMatch(m.log(), new RegExp(info.secretAccessKey), 'nor the secret key')
})

t.test("a clock 10 minutes off the server's: the mount starts, and its reads sign with the server's time", async (t) => {
  const { first, second, lying } = await setUp(t, 'clock')
  const minutes = 60_000
  // The server's clock 10 minutes ahead: the start's requests (the SDK) learn the offset, and the
  // native engine starts with it. Once, the mount started, but every read was EACCES.
  lying.skew(10 * minutes)
  const m = await mount(t, info, BUCKET, { env: { O3_ENDPOINT: lying.endpoint } })
  t.equal(sha256(await readFile(path.join(m.mountpoint, 'clock/first.bin'))), sha256(first), 'read 10 minutes ahead')
  const ahead = (await freshStats(m)).native.clockOffsetMs
  t.ok(Math.abs(ahead - 10 * minutes) < 5_000, `signatures 10 minutes ahead (${ahead} ms)`)
  // Then 10 minutes behind (a clock set while the mount runs): the native engine corrects itself
  // from the Date of the request refused, as the SDK does for the lookup.
  const refusedBefore = lying.skewed
  lying.skew(-10 * minutes)
  t.equal(sha256(await readFile(path.join(m.mountpoint, 'clock/second.bin'))), sha256(second), 'read 10 minutes behind')
  t.ok(lying.skewed > refusedBefore, `requests were refused as skewed on the way (${lying.skewed - refusedBefore})`)
  const behind = (await freshStats(m)).native.clockOffsetMs
  t.ok(Math.abs(behind + 10 * minutes) < 5_000, `signatures 10 minutes behind (${behind} ms)`)
})
