import t from 'tap'
import { encodeHeader, parseHeader, parseSafetensors, type StateTensor } from '../checkpoint/safetensors.js'
import { decodeMeta, encodeMeta } from '../checkpoint/meta.js'
import { O3IntegrityError } from '../lib/o3/errors.js'

const tensors: StateTensor[] = [
  { name: 'conv.weight', dtype: 'F32', shape: [2, 3], data: Buffer.from(new Float32Array([1, 2, 3, 4, 5, 6]).buffer) },
  { name: 'steps', dtype: 'I64', shape: [], data: Buffer.from(new BigInt64Array([42n]).buffer) },
  { name: 'mask', dtype: 'BOOL', shape: [3], data: Buffer.from([1, 0, 1]) },
  { name: 'half', dtype: 'BF16', shape: [0], data: Buffer.alloc(0) },
]

function file(ts: StateTensor[], md: Record<string, string>): Buffer {
  return Buffer.concat([encodeHeader(ts, md), ...ts.map((x) => x.data)])
}

/** A file whose header is `json` verbatim, followed by `data`. */
function raw(json: string, data = Buffer.alloc(0)): Buffer {
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)))
  return Buffer.concat([len, Buffer.from(json), data])
}

t.test('layout: LE length, space padding to 8 bytes, tensors in order', async (t) => {
  const only = [tensors[2]!]
  const h = encodeHeader(only, { a: 'b' })
  const json = '{"__metadata__":{"a":"b"},"mask":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}}'
  const padded = Math.ceil(json.length / 8) * 8
  t.equal(h.readBigUInt64LE(0), BigInt(padded))
  t.equal(h.subarray(8).toString(), json.padEnd(padded, ' '))
  t.equal(h.length % 8, 0)
})

t.test('round trip with metadata', async (t) => {
  const meta = {
    step: 1200,
    epoch: 3,
    model: 'fashion-cnn',
    config: { lr: 0.01, layers: [32, 64] },
    dataPosition: { batch: 17, seed: 7 },
    input: {
      dataset: 'imagefolder' as const,
      channels: 3,
      height: 32,
      width: 32,
      classes: 2,
      classNames: ['cat', 'dog'],
      resize: 'bilinear' as const,
      normalize: { mul: 2 / 255, sub: 1 },
    },
  }
  const f = file(tensors, encodeMeta(meta))
  const { header, tensors: back } = parseSafetensors(f, 'f')
  t.same(
    back.map((x) => [x.name, x.dtype, x.shape, [...x.data]]),
    tensors.map((x) => [x.name, x.dtype, x.shape, [...x.data]]),
  )
  t.equal(header.metadata.format, 'pt')
  t.same(decodeMeta(header.metadata, 'f'), meta)
  t.equal(header.dataStart % 8, 0)
})

t.test('the writer refuses inconsistent tensors', async (t) => {
  t.throws(() => encodeHeader([{ ...tensors[0]!, shape: [7] }], {}), RangeError)
  t.throws(() => encodeHeader([tensors[0]!, tensors[0]!], {}), RangeError)
  t.throws(() => encodeHeader([{ ...tensors[0]!, name: '__metadata__' }], {}), RangeError)
  t.throws(() => encodeHeader([{ ...tensors[0]!, dtype: 'F8' as never }], {}), RangeError)
})

t.test('the reader validates bounds, offsets and sizes', async (t) => {
  const good = '{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
  t.ok(parseHeader(raw(good, Buffer.alloc(8)), 8 + good.length + 8, 'ok'))
  const bad: [string, Buffer][] = [
    [
      'header longer than the file',
      (() => {
        const b = raw(good, Buffer.alloc(8))
        b.writeBigUInt64LE(10_000n)
        return b
      })(),
    ],
    [
      'header over 100 MB',
      (() => {
        const b = raw(good)
        b.writeBigUInt64LE(200_000_000n)
        return b
      })(),
    ],
    ['not JSON', raw('{"x":', Buffer.alloc(8))],
    ['not an object', raw('[1,2]')],
    ['invalid UTF-8', Buffer.concat([raw('{"\xff":1}').subarray(0, 8), Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d])])],
    ['unknown dtype', raw('{"x":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}}', Buffer.alloc(2))],
    ['size vs shape', raw('{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', Buffer.alloc(8))],
    ['negative dimension', raw('{"x":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}')],
    ['reversed offsets', raw('{"x":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}', Buffer.alloc(4))],
    ['gap', raw('{"x":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}', Buffer.alloc(8))],
    ['overlap', raw('{"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"y":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}', Buffer.alloc(6))],
    ['trailing bytes', raw(good, Buffer.alloc(9))],
    ['truncated data', raw(good, Buffer.alloc(7))],
    ['metadata not strings', raw('{"__metadata__":{"step":1}}')],
  ]
  for (const [why, f] of bad) t.throws(() => parseSafetensors(f, why), O3IntegrityError, why)
  t.throws(() => decodeMeta({ step: 'x', epoch: '1' }, 'm'), O3IntegrityError)
})
