/**
 * Node's flags for a mount's process: its JavaScript only answers metadata while native threads
 * move the bytes, so V8's young generation stays at 1 MiB semi-spaces (the default grows them to 16)
 * and one V8 worker thread does its background work (the default is four). Together 11 MiB less
 * resident at rest and at peak (a cold 512 MiB read: 602 -> 591 MiB). The `o3mount` command's
 * shebang carries the same flags (a test keeps the two equal); a mount started by launchMount(), a
 * test or the bench gets them from here.
 */
export const MOUNT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=1', '--v8-pool-size=1']
