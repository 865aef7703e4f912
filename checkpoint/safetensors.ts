import { O3IntegrityError } from '../lib/o3/errors.js'
// The trainer's own tensor model, so that stateDict() output is saved and loaded as is.
import { DTYPE_SIZE, type DType, type StateTensor } from '../lib/state-tensor.js'

export type { DType, StateTensor }

export interface TensorEntry {
  name: string
  dtype: DType
  shape: number[]
  /** Byte range `[begin, end)` relative to the start of the data section. */
  offsets: [number, number]
}

export interface SafetensorsHeader {
  tensors: TensorEntry[]
  metadata: Record<string, string>
  /** Offset of the data section in the file: 8 + header length. */
  dataStart: number
  /** Length of the data section, the end of the last tensor. */
  dataSize: number
}

/** The reference implementation's limit; a larger header is refused before it is read. */
export const MAX_HEADER_BYTES = 100_000_000

function isDType(s: unknown): s is DType {
  return typeof s === 'string' && Object.hasOwn(DTYPE_SIZE, s)
}

function elementCount(shape: number[], what: string): number {
  let n = 1
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new O3IntegrityError(`${what}: shape ${JSON.stringify(shape)} has an invalid dimension`)
    n *= d
    if (!Number.isSafeInteger(n)) throw new O3IntegrityError(`${what}: shape ${JSON.stringify(shape)} overflows`)
  }
  return n
}

/**
 * The file's first bytes: little-endian length, then the JSON header padded with spaces so that
 * the data section starts 8-byte aligned (as the reference writer does). Tensors follow in the
 * order given, back to back.
 */
export function encodeHeader(tensors: readonly Pick<StateTensor, 'name' | 'dtype' | 'shape' | 'data'>[], metadata: Record<string, string>): Buffer {
  const json: Record<string, unknown> = { __metadata__: metadata }
  const seen = new Set<string>()
  let offset = 0
  for (const t of tensors) {
    if (t.name === '__metadata__' || t.name === '' || seen.has(t.name))
      throw new RangeError(`tensor name ${JSON.stringify(t.name)} is reserved, empty or repeated`)
    if (!isDType(t.dtype)) throw new RangeError(`tensor ${t.name}: unknown dtype ${String(t.dtype)}`)
    seen.add(t.name)
    const bytes = elementCount(t.shape, `tensor ${t.name}`) * DTYPE_SIZE[t.dtype]
    if (bytes !== t.data.length)
      throw new RangeError(`tensor ${t.name}: ${t.data.length} bytes of data for ${t.dtype}${JSON.stringify(t.shape)} (${bytes} expected)`)
    json[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] }
    offset += bytes
  }
  const body = Buffer.from(JSON.stringify(json), 'utf8')
  const padded = Math.ceil(body.length / 8) * 8
  const out = Buffer.alloc(8 + padded, 0x20)
  out.writeBigUInt64LE(BigInt(padded), 0)
  body.copy(out, 8)
  return out
}

/** Reads the header length from the first 8 bytes and checks it against the file size. */
export function headerLength(first8: Buffer, fileSize: number | undefined, what: string): number {
  if (first8.length < 8) throw new O3IntegrityError(`${what}: ${first8.length} bytes is too short for a safetensors file`)
  const n = first8.readBigUInt64LE(0)
  if (n > BigInt(MAX_HEADER_BYTES)) throw new O3IntegrityError(`${what}: header length ${n} exceeds ${MAX_HEADER_BYTES}`)
  if (fileSize !== undefined && 8n + n > BigInt(fileSize))
    throw new O3IntegrityError(`${what}: header length ${n} runs past the end of the ${fileSize}-byte file`)
  return Number(n)
}

/**
 * Parses and validates a header: JSON object, known dtypes, sizes that match shapes, and tensors
 * that tile the data section exactly (no gap, no overlap), as the reference reader demands.
 * `prefix` holds at least the 8 + N header bytes; `fileSize`, when known, must equal the end.
 */
export function parseHeader(prefix: Buffer, fileSize: number | undefined, what: string): SafetensorsHeader {
  const n = headerLength(prefix, fileSize, what)
  if (prefix.length < 8 + n) throw new O3IntegrityError(`${what}: header truncated (${prefix.length - 8} of ${n} bytes)`)
  let json: unknown
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(prefix.subarray(8, 8 + n)))
  } catch (err) {
    throw new O3IntegrityError(`${what}: header is not UTF-8 JSON (${(err as Error).message})`)
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new O3IntegrityError(`${what}: header is not a JSON object`)
  const metadata: Record<string, string> = {}
  const tensors: TensorEntry[] = []
  for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new O3IntegrityError(`${what}: __metadata__ is not an object`)
      for (const [k, s] of Object.entries(v)) {
        if (typeof s !== 'string') throw new O3IntegrityError(`${what}: metadata ${k} is not a string`)
        metadata[k] = s
      }
      continue
    }
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown }
    const tw = `${what}: tensor ${JSON.stringify(name)}`
    if (!isDType(e?.dtype)) throw new O3IntegrityError(`${tw}: unknown dtype ${JSON.stringify(e?.dtype)}`)
    if (!Array.isArray(e.shape)) throw new O3IntegrityError(`${tw}: shape is not an array`)
    const o = e.data_offsets
    if (!Array.isArray(o) || o.length !== 2 || !o.every((x) => Number.isSafeInteger(x) && x >= 0) || o[0] > o[1]) {
      throw new O3IntegrityError(`${tw}: invalid data_offsets ${JSON.stringify(o)}`)
    }
    const bytes = elementCount(e.shape as number[], tw) * DTYPE_SIZE[e.dtype]
    if (o[1] - o[0] !== bytes) throw new O3IntegrityError(`${tw}: ${o[1] - o[0]} bytes for ${e.dtype}${JSON.stringify(e.shape)} (${bytes} expected)`)
    tensors.push({ name, dtype: e.dtype, shape: e.shape as number[], offsets: [o[0], o[1]] })
  }
  const byOffset = [...tensors].sort((a, b) => a.offsets[0] - b.offsets[0] || a.offsets[1] - b.offsets[1])
  let end = 0
  for (const t of byOffset) {
    if (t.offsets[0] !== end)
      throw new O3IntegrityError(`${what}: tensor ${JSON.stringify(t.name)} starts at ${t.offsets[0]}, expected ${end} (gap or overlap)`)
    end = t.offsets[1]
  }
  const dataStart = 8 + n
  if (fileSize !== undefined && dataStart + end !== fileSize) {
    throw new O3IntegrityError(`${what}: tensors end at byte ${dataStart + end} but the file has ${fileSize}`)
  }
  return { tensors, metadata, dataStart, dataSize: end }
}

/** Parses a whole file in memory; tensor data are views of `file`, not copies. */
export function parseSafetensors(file: Buffer, what: string): { header: SafetensorsHeader; tensors: StateTensor[] } {
  const header = parseHeader(file, file.length, what)
  const tensors = header.tensors.map((t) => ({
    name: t.name,
    dtype: t.dtype,
    shape: t.shape,
    data: file.subarray(header.dataStart + t.offsets[0], header.dataStart + t.offsets[1]),
  }))
  return { header, tensors }
}
