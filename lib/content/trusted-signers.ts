import { CliError } from '../cli/exit-codes.js'

const ADDRESS = /^0x[0-9a-fA-F]{40}$/

/**
 * The signer addresses a command trusts: `--trust-signer` values, else the comma-separated
 * `O3_TRUSTED_SIGNERS`; empty when neither is set. A malformed address is a CliError with `exitCode`.
 */
export function parseTrustedSigners(flag: readonly string[] | undefined, env: string | undefined, exitCode: number): string[] {
  const from = flag && flag.length > 0 ? '--trust-signer' : 'O3_TRUSTED_SIGNERS'
  const list = (flag && flag.length > 0 ? flag : (env ?? '').split(',')).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean)
  for (const a of list) if (!ADDRESS.test(a)) throw new CliError(`${from}: ${JSON.stringify(a)} is not a 0x address of 40 hex digits`, exitCode)
  return list
}
