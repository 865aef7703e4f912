import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { rootCertificates } from 'node:tls'
import { resolveConfig, DEFAULT_ENDPOINT, DEFAULT_REGION, O3ConfigError } from '../lib/o3/index.js'
import { loadSigner, recoverAddress, signerFromHex } from '../lib/content/signer.js'

t.test('first match wins: flags, O3_*, AWS_*, defaults', async (t) => {
  const env = { O3_ENDPOINT: 'http://o3.example:1', AWS_ENDPOINT_URL: 'http://aws.example:2', O3_REGION: 'r-o3', AWS_REGION: 'r-aws' }
  t.match(resolveConfig({ endpoint: 'http://flag.example:3', region: 'r-flag' }, env), {
    endpoint: 'http://flag.example:3',
    region: 'r-flag',
    sources: { endpoint: '--endpoint', region: '--region' },
  })
  t.match(resolveConfig({}, env), { endpoint: 'http://o3.example:1', region: 'r-o3' })
  t.match(resolveConfig({}, { AWS_ENDPOINT_URL: 'http://aws.example:2', AWS_REGION: 'r-aws' }), { endpoint: 'http://aws.example:2', region: 'r-aws' })
  const d = resolveConfig({}, {})
  t.equal(d.endpoint, DEFAULT_ENDPOINT)
  t.equal(d.region, DEFAULT_REGION)
  t.equal(d.credentials, undefined, 'left to the AWS chain (AWS_* variables, profiles)')
})

t.test('credentials from the environment or a file, both halves required', async (t) => {
  t.same(resolveConfig({}, { O3_ACCESS_KEY_ID: 'id', O3_SECRET_ACCESS_KEY: 'sec' }).credentials, {
    accessKeyId: 'id',
    secretAccessKey: 'sec',
    sessionToken: undefined,
  })
  t.throws(() => resolveConfig({}, { O3_ACCESS_KEY_ID: 'id' }), O3ConfigError)
  const dir = mkdtempSync(join(tmpdir(), 'o3cfg-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'keys')
  writeFileSync(file, 'export O3_ACCESS_KEY_ID="fid"\nO3_SECRET_ACCESS_KEY=fsec\n')
  t.match(resolveConfig({ credentialsFile: file }, { O3_ACCESS_KEY_ID: 'id', O3_SECRET_ACCESS_KEY: 'sec' }), {
    credentials: { accessKeyId: 'fid', secretAccessKey: 'fsec' },
    sources: { credentials: '--credentials-file' },
  })
  t.throws(() => resolveConfig({ credentialsFile: join(dir, 'missing') }, {}), /cannot read credentials file/)
  t.throws(() => resolveConfig({ endpoint: 'ftp://x' }, {}), O3ConfigError)
  t.throws(() => resolveConfig({ endpoint: 'not a url' }, {}), /is not a URL/)
})

t.test('AKAVE_PRIVATE_KEY: validated, shown only as its address, signs EIP-191', async (t) => {
  const key = '0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80'
  const s = loadSigner({ AKAVE_PRIVATE_KEY: key })!
  t.equal(s.address, '0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266')
  // The signature ethers' Wallet.signMessage('hello') gives for this key.
  t.equal(
    s.sign('hello'),
    '0xf16ea9a3478698f695fd1401bfe27e9e4a7e8e3da94aa72b021125e31fa899cc573c48ea3fe1d4ab61a9db10c19032026e3ed2dbccba5a178235ac27f94504311c',
  )
  t.equal(recoverAddress('hello', s.sign('hello')), s.address)
  t.not(recoverAddress('hellO', s.sign('hello')), s.address, 'another message recovers another address')
  t.equal(Object.keys(s).join(','), 'address,sign', 'nothing else is exposed')
  t.notMatch(JSON.stringify(s), key.slice(2))
  const dir = mkdtempSync(join(tmpdir(), 'o3key-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'k'), `${key}\n`)
  t.equal(loadSigner({ AKAVE_PRIVATE_KEY_FILE: join(dir, 'k') })!.address, s.address)
  t.equal(loadSigner({}), undefined)
  t.throws(() => signerFromHex('0x1234', 'AKAVE_PRIVATE_KEY'), /AKAVE_PRIVATE_KEY is not a 32-byte hex/)
  t.throws(() => signerFromHex('00'.repeat(32), 'AKAVE_PRIVATE_KEY'), /not a valid secp256k1/)
})

t.test('attempts per request: --max-attempts, then O3_MAX_ATTEMPTS, then AWS_MAX_ATTEMPTS, else 5; a whole number from 1 to 20', async (t) => {
  const attempts = (flags: { maxAttempts?: string }, env: Record<string, string>) => {
    const c = resolveConfig(flags, env)
    return [c.maxAttempts, c.sources.maxAttempts]
  }
  t.same(attempts({}, {}), [5, 'default'])
  t.same(attempts({}, { AWS_MAX_ATTEMPTS: '3' }), [3, 'AWS_MAX_ATTEMPTS'])
  t.same(attempts({}, { AWS_MAX_ATTEMPTS: '3', O3_MAX_ATTEMPTS: '7' }), [7, 'O3_MAX_ATTEMPTS'])
  t.same(attempts({ maxAttempts: '1' }, { O3_MAX_ATTEMPTS: '7' }), [1, '--max-attempts'])
  for (const bad of ['0', '21', '2.5', '-1', 'three', '1e1'])
    t.throws(
      () => resolveConfig({}, { O3_MAX_ATTEMPTS: bad }),
      new O3ConfigError(`attempts per request "${bad}" (from O3_MAX_ATTEMPTS) must be a whole number from 1 to 20; the default is 5`),
      bad,
    )
})

t.test('CA bundle: --ca-bundle, then O3_CA_BUNDLE, then AWS_CA_BUNDLE, else the system store; checked to be PEM certificates', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'o3ca-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  // Any well-formed certificate will do for these checks: the one Node itself ships first.
  const pem = rootCertificates[0]!
  const a = join(dir, 'a.pem')
  const b = join(dir, 'b.pem')
  writeFileSync(a, `# a comment line\n${pem}\n${rootCertificates[1]}\n`)
  writeFileSync(b, pem)
  t.match(resolveConfig({ caBundle: a }, { O3_CA_BUNDLE: b, AWS_CA_BUNDLE: b }), { caBundle: { path: a }, sources: { caBundle: '--ca-bundle' } })
  t.match(resolveConfig({}, { O3_CA_BUNDLE: b, AWS_CA_BUNDLE: a }), { caBundle: { path: b, pem }, sources: { caBundle: 'O3_CA_BUNDLE' } })
  t.match(resolveConfig({}, { AWS_CA_BUNDLE: a }), { caBundle: { path: a }, sources: { caBundle: 'AWS_CA_BUNDLE' } })
  const none = resolveConfig({}, {})
  t.equal(none.caBundle, undefined)
  t.equal(none.sources.caBundle, 'system store')
  const cwd = process.cwd()
  process.chdir(dir)
  t.teardown(() => process.chdir(cwd))
  t.equal(resolveConfig({ caBundle: 'b.pem' }, {}).caBundle?.path, b, 'made absolute, for the native engine')

  const missing = join(dir, 'missing.pem')
  t.throws(() => resolveConfig({ caBundle: missing }, {}), {
    name: 'O3ConfigError',
    exitCode: 78,
    message: `cannot read CA bundle (from --ca-bundle) ${missing}: ENOENT; check the path and its permissions`,
  })
  const text = join(dir, 'text.pem')
  writeFileSync(text, 'not a certificate\n')
  t.throws(() => resolveConfig({}, { O3_CA_BUNDLE: text }), {
    exitCode: 78,
    message: /^CA bundle \(from O3_CA_BUNDLE\) .*text\.pem holds no PEM certificate; give a file of -----BEGIN CERTIFICATE----- blocks/,
  })
  const broken = join(dir, 'broken.pem')
  writeFileSync(broken, `${pem}\n-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n`)
  t.throws(() => resolveConfig({}, { AWS_CA_BUNDLE: broken }), {
    exitCode: 78,
    message: /^CA bundle \(from AWS_CA_BUNDLE\) .*broken\.pem: certificate 2 of 2 is not a DER certificate/,
  })
  const truncated = join(dir, 'truncated.pem')
  writeFileSync(truncated, pem.replace(/\n[^\n]*\n-----END/, '\n-----END'))
  t.throws(() => resolveConfig({ caBundle: truncated }, {}), { exitCode: 78, message: /certificate 1 of 1 is not a DER certificate/ })
  const notCert = join(dir, 'not-cert.pem')
  // A DER SEQUENCE that is no certificate.
  writeFileSync(notCert, `-----BEGIN CERTIFICATE-----\n${Buffer.from([0x30, 0x03, 0x02, 0x01, 0x05]).toString('base64')}\n-----END CERTIFICATE-----\n`)
  t.throws(() => resolveConfig({ caBundle: notCert }, {}), { exitCode: 78, message: /certificate 1 of 1 cannot be parsed/ })
  t.ok(resolveConfig({ caBundle: '/etc/ssl/certs/ca-certificates.crt' }, {}).caBundle, "Debian's whole system bundle passes")
  t.throws(() => resolveConfig({ caBundle: dir }, {}), { exitCode: 78, message: /EISDIR/ })
})
