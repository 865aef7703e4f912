/**
 * The tensor model shared by the trainer's state dict and the checkpoint format, kept apart from
 * the addon so that reading or writing a checkpoint never loads native code.
 */

/** Element types, named as safetensors names them. */
export type DType = 'F32' | 'F64' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL'

/** Bytes per element of each dtype. */
export const DTYPE_SIZE: Readonly<Record<DType, number>> = { F64: 8, I64: 8, F32: 4, I32: 4, F16: 2, BF16: 2, I16: 2, I8: 1, U8: 1, BOOL: 1 }

/**
 * One named tensor of a trainer's state: little-endian, row-major bytes. Names: `model.<param or
 * buffer>`, `optim.<param>.<momentum_buffer|step|exp_avg|exp_avg_sq>`, `rng.cpu`, `rng.cuda`
 * (CUDA only), `loader.position` (I64 [seed, epoch, index]).
 */
export interface StateTensor {
  name: string
  dtype: DType
  shape: number[]
  data: Buffer
}
