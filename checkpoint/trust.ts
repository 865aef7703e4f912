import { O3IntegrityError, O3NotFoundError, O3UsageError } from '../lib/o3/errors.js'
import type { Manifest, ManifestEntry } from './records.js'

import { parseTrustedSigners, TRUSTED_SIGNERS_ENV, trustSignerFlag } from '../lib/content/trusted-signers.js'

export { TRUSTED_SIGNERS_ENV }

/** `--trust-signer` for every command that loads checkpoints. */
export const TRUST_SIGNER_FLAG = trustSignerFlag('checkpoints', "the run's first signer")

/**
 * Whose signature a checkpoint must carry before resume, `o3ckpt get` or `o3ckpt verify` accept
 * it. With named signers (--trust-signer, O3_TRUSTED_SIGNERS): one of them, always. Without:
 * trust on first use per run: once the run holds a signed checkpoint, the signer of its earliest
 * one whose signature verifies is the only one accepted, and unsigned checkpoints are refused; a run
 * that never signed anything accepts unsigned checkpoints. Someone who can write to the bucket can
 * sign with a key of their own, but cannot make that key the run's.
 */
export class TrustPolicy {
  private constructor(private readonly named: readonly string[]) {}

  static readonly firstUse = new TrustPolicy([])

  /** From repeated `--trust-signer` values plus O3_TRUSTED_SIGNERS; O3UsageError for a malformed address. */
  static fromFlags(flags: readonly string[] = [], env: Record<string, string | undefined> = process.env): TrustPolicy {
    return new TrustPolicy(parseTrustedSigners(flags, env, (message) => new O3UsageError(message)))
  }

  /**
   * Throws O3IntegrityError, naming the expected and the found signer, unless a checkpoint whose
   * verified signer is `found` (undefined: unsigned) may be loaded from the run whose manifest is
   * `manifest`. `verifiedSigner` returns the signer of an entry's sidecar once its signature checks.
   */
  async check(found: string | undefined, what: string, manifest: Manifest, verifiedSigner: (e: ManifestEntry) => Promise<string | undefined>): Promise<void> {
    const expected = this.named.length > 0 ? this.named : await firstSigner(manifest, verifiedSigner)
    if (expected.length === 0 || (found && expected.some((a) => a.toLowerCase() === found.toLowerCase()))) return
    const source = this.named.length > 0 ? 'the trusted signer' : "this run's signer (trusted on first use; name another with --trust-signer)"
    throw new O3IntegrityError(`${what}: ${found ? `signed by ${found}` : 'unsigned'}, but ${source} is ${expected.join(' or ')}`)
  }
}

/** The run's first signer: of its earliest signed checkpoint whose signature verifies; none when nothing is signed. */
async function firstSigner(manifest: Manifest, verifiedSigner: (e: ManifestEntry) => Promise<string | undefined>): Promise<string[]> {
  const signed = manifest.checkpoints.filter((e) => e.signer !== undefined).sort((a, b) => a.seq - b.seq)
  for (const entry of signed) {
    try {
      const signer = await verifiedSigner(entry)
      if (signer) return [signer]
    } catch (err) {
      if (!(err instanceof O3IntegrityError || err instanceof O3NotFoundError)) throw err
    }
  }
  if (signed.length === 0) return []
  throw new O3IntegrityError(`the run's manifest lists signed checkpoints but no signature verifies; name the signer to trust with --trust-signer`)
}
