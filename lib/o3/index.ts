export {
  O3Client,
  type O3ClientOptions,
  type ObjectInfo,
  type ListEntry,
  type RangeOptions,
  type ObjectPin,
  type PutOptions,
  type CompletedPart,
  type StoredObject,
  type BucketVersioning,
  type ObjectVersion,
  type O3Stats,
} from './client.js'
export { resolveConfig, DEFAULT_ENDPOINT, DEFAULT_REGION, type O3Config, type O3Flags, type Credentials } from './config.js'
export * from './errors.js'
export { parseLocation, checkRelativeKey, type Scope } from './scope.js'
export { DEFAULT_RETRY, type RetryPolicy } from './retry.js'
export { MultipartSink, type MultipartOptions } from './multipart.js'
export { normalizeEtag, sameEtag } from './etag.js'
