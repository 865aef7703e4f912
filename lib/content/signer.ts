import { secp256k1 } from '@noble/curves/secp256k1.js'
import { keccak_256 } from '@noble/hashes/sha3.js'
import { bytesToHex, hexToBytes, utf8ToBytes } from '@noble/hashes/utils.js'
import { readUserFile } from '../read-user-file.js'
import { O3ConfigError } from '../o3/errors.js'

/**
 * An Ethereum key that signs checkpoint records (EIP-191 personal messages). The private key
 * stays inside this closure: nothing here can print, log or serialise it.
 */
export interface Signer {
  /** The checksummed 0x address, the only thing about the key that is ever shown. */
  readonly address: string
  /** A 65-byte r||s||v signature, hex with 0x, over the EIP-191 hash of `message`. */
  sign(message: string): string
}

function eip191Hash(message: string): Uint8Array {
  const body = utf8ToBytes(message)
  const prefix = utf8ToBytes(`\x19Ethereum Signed Message:\n${body.length}`)
  const all = new Uint8Array(prefix.length + body.length)
  all.set(prefix)
  all.set(body, prefix.length)
  return keccak_256(all)
}

function toChecksumAddress(pubUncompressed: Uint8Array): string {
  const hex = bytesToHex(keccak_256(pubUncompressed.subarray(1)).subarray(12))
  const hash = bytesToHex(keccak_256(utf8ToBytes(hex)))
  let out = '0x'
  for (let i = 0; i < hex.length; i++) out += parseInt(hash[i]!, 16) >= 8 ? hex[i]!.toUpperCase() : hex[i]
  return out
}

export function signerFromHex(hexKey: string, source: string): Signer {
  const clean = hexKey.trim().replace(/^0x/i, '')
  if (!/^[0-9a-fA-F]{64}$/.test(clean)) {
    throw new O3ConfigError(`${source} is not a 32-byte hex Ethereum private key (64 hex digits, optional 0x)`)
  }
  const key = hexToBytes(clean)
  if (!secp256k1.utils.isValidSecretKey(key)) throw new O3ConfigError(`${source} is not a valid secp256k1 private key`)
  const address = toChecksumAddress(secp256k1.getPublicKey(key, false))
  return {
    address,
    sign(message: string): string {
      const sig = secp256k1.sign(eip191Hash(message), key, { prehash: false, format: 'recovered' })
      // noble's recovered format is recovery||r||s; Ethereum wants r||s||(27+recovery).
      const out = new Uint8Array(65)
      out.set(sig.subarray(1, 65))
      out[64] = 27 + sig[0]!
      return `0x${bytesToHex(out)}`
    },
  }
}

/** The variables that hold or point at the signing key: a child process that does not sign must not inherit them. */
export const SIGNING_KEY_ENV = ['AKAVE_PRIVATE_KEY', 'AKAVE_PRIVATE_KEY_FILE'] as const

/** `env` without the signing key's variables. */
export function withoutSigningKey(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out = { ...env }
  for (const k of SIGNING_KEY_ENV) delete out[k]
  return out
}

/** Loads AKAVE_PRIVATE_KEY (or the file named by AKAVE_PRIVATE_KEY_FILE); undefined when neither is set. */
export function loadSigner(env: Record<string, string | undefined> = process.env): Signer | undefined {
  if (env.AKAVE_PRIVATE_KEY) return signerFromHex(env.AKAVE_PRIVATE_KEY, 'AKAVE_PRIVATE_KEY')
  const file = env.AKAVE_PRIVATE_KEY_FILE
  if (!file) return undefined
  const text = readUserFile(file, 'AKAVE_PRIVATE_KEY_FILE', (message) => new O3ConfigError(message))
  return signerFromHex(text, `AKAVE_PRIVATE_KEY_FILE ${file}`)
}

/** Recovers the signer's checksummed address from an EIP-191 signature; undefined if malformed. */
export function recoverAddress(message: string, signatureHex: string): string | undefined {
  const clean = signatureHex.replace(/^0x/i, '')
  if (!/^[0-9a-fA-F]{130}$/.test(clean)) return undefined
  const sig = hexToBytes(clean)
  const v = sig[64]!
  const recovery = v >= 27 ? v - 27 : v
  if (recovery !== 0 && recovery !== 1) return undefined
  const recovered = new Uint8Array(65)
  recovered[0] = recovery
  recovered.set(sig.subarray(0, 64), 1)
  try {
    const pub = secp256k1.recoverPublicKey(recovered, eip191Hash(message), { prehash: false })
    return toChecksumAddress(secp256k1.Point.fromBytes(pub).toBytes(false))
  } catch {
    return undefined
  }
}
