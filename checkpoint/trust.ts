import { O3IntegrityError, O3UsageError } from '../lib/o3/errors.js'
import { parseTrustedSigners, TRUSTED_SIGNERS_ENV, trustSignerFlag } from '../lib/content/trusted-signers.js'

export { TRUSTED_SIGNERS_ENV }

/** `--trust-signer` for every command that loads checkpoints. */
export const TRUST_SIGNER_FLAG = trustSignerFlag('checkpoints', "the one key the run's checkpoints are signed by")

/**
 * Whose signature a checkpoint must carry before resume, `o3ckpt get` or `o3ckpt verify` accept
 * it. With named signers (--trust-signer, O3_TRUSTED_SIGNERS): one of them, always. Without:
 * trust on first use per run: once the run holds a signed checkpoint, the one key its verified
 * signatures come from is the only one accepted, and unsigned checkpoints are refused; a run that
 * never signed anything accepts unsigned checkpoints. That signer is read from the signed sidecar
 * records themselves (CheckpointStore.runSigner), never from the manifest, whose signer fields
 * anyone with write access can delete. Someone who can write to the bucket can sign with a key of
 * their own, but cannot make that key the run's: records of two keys make every checkpoint refused
 * until --trust-signer names one.
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
   * verified signer is `found` (undefined: unsigned) may be loaded. `runSigner` gives the run's
   * signer under trust on first use; it is asked only when no signer is named.
   */
  async check(found: string | undefined, what: string, runSigner: () => Promise<string | undefined>): Promise<void> {
    const first = this.named.length > 0 ? undefined : await runSigner()
    const expected = this.named.length > 0 ? this.named : first ? [first] : []
    if (expected.length === 0 || (found && expected.some((a) => a.toLowerCase() === found.toLowerCase()))) return
    const source = this.named.length > 0 ? 'the trusted signer' : "this run's signer (trusted on first use; name another with --trust-signer)"
    throw new O3IntegrityError(`${what}: ${found ? `signed by ${found}` : 'unsigned'}, but ${source} is ${expected.join(' or ')}`)
  }

  /**
   * Throws what `runSigner` throws where check() would ask it (no signer named), so that a run
   * whose signer cannot be told fails as a whole, not once for each of its checkpoints.
   */
  async checkRun(runSigner: () => Promise<string | undefined>): Promise<void> {
    if (this.named.length === 0) await runSigner()
  }
}
