/** Environment variable with trusted signer addresses, comma-separated. */
export const TRUSTED_SIGNERS_ENV = 'O3_TRUSTED_SIGNERS'

const ADDRESS = /^0x[0-9a-fA-F]{40}$/

/**
 * The repeatable `--trust-signer` option as commander's `.option(...)` arguments, declared here
 * once for every command: `what` names what the signature is checked on, `otherwise` what is
 * accepted without the option.
 */
export function trustSignerFlag(what: string, otherwise: string) {
  return [
    '--trust-signer <0x-address>',
    `accept only ${what} signed by this address (repeatable; also ${TRUSTED_SIGNERS_ENV}, comma-separated); without it, ${otherwise}`,
    (v: string, prev: string[] | undefined): string[] => [...(prev ?? []), v],
  ] as const
}

/**
 * The signer addresses a command trusts, for checkpoints and dataset manifests alike: the repeated
 * `--trust-signer` values plus the comma-separated O3_TRUSTED_SIGNERS; empty when neither is set.
 * A malformed address is the error `invalid` makes of a one-line message.
 */
export function parseTrustedSigners(flags: readonly string[] = [], env: Record<string, string | undefined>, invalid: (message: string) => Error): string[] {
  const fromEnv = (env[TRUSTED_SIGNERS_ENV] ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
  const all = [...flags.map((a) => [a, '--trust-signer'] as const), ...fromEnv.map((a) => [a, TRUSTED_SIGNERS_ENV] as const)]
  for (const [a, source] of all) if (!ADDRESS.test(a)) throw invalid(`${source} ${JSON.stringify(a)} is not an address: give 0x and 40 hex digits`)
  return all.map(([a]) => a)
}
