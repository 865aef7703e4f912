// Temporary credentials that expire while the mount lives (a profile's credential_process here,
// standing in for SSO, web identity on Kubernetes, container and instance roles): the mount asks
// for them again before they expire and signs its reads with the new ones. Swift's tempauth has no
// session tokens, so the lying server in front of it plays their expiry (403 ExpiredToken for a
// token it was told has expired). Real S3 server, real FUSE mount, the AWS SDK's own
// credential_process provider.
import { createHash, randomBytes } from 'node:crypto'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { startLyingS3 } from './support/lying-s3.js'
import { logWhen, mount } from './support/o3mount.js'

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const BUCKET = `mount-creds-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())

t.test('temporary credentials are refreshed before they expire, and the reads after sign with the new ones', async (t) => {
  const first = randomBytes(256 << 10)
  const second = randomBytes(256 << 10)
  await client.put('creds/first.bin', first)
  await client.put('creds/second.bin', second)
  const lying = await startLyingS3({ target: info.endpoint, objectBytes: () => undefined })
  t.teardown(() => lying.close())

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
