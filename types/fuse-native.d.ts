/** The parts of fuse-native 2.2.6 that o3mount uses. Errors are negative errno values (Fuse.ENOENT, ...). */
declare module 'fuse-native' {
  export interface FuseStat {
    mode: number
    uid: number
    gid: number
    size: number
    mtime: Date | number
    atime: Date | number
    ctime: Date | number
    nlink?: number
    ino?: number
    blksize?: number
    blocks?: number
    dev?: number
    rdev?: number
  }

  export interface FuseStatfs {
    bsize: number
    frsize: number
    blocks: number
    bfree: number
    bavail: number
    files: number
    ffree: number
    favail: number
    fsid: number
    flag: number
    namemax: number
  }

  type Done = (err: number) => void

  export interface FuseOps {
    init?(cb: Done): void
    statfs?(path: string, cb: (err: number, statfs?: FuseStatfs) => void): void
    getattr?(path: string, cb: (err: number, stat?: FuseStat) => void): void
    fgetattr?(path: string, fd: number, cb: (err: number, stat?: FuseStat) => void): void
    access?(path: string, mode: number, cb: Done): void
    open?(path: string, flags: number, cb: (err: number, fd?: number) => void): void
    opendir?(path: string, flags: number, cb: (err: number, fd?: number) => void): void
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytesReadOrErr: number) => void): void
    write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytesWrittenOrErr: number) => void): void
    release?(path: string, fd: number, cb: Done): void
    releasedir?(path: string, fd: number, cb: Done): void
    readdir?(path: string, cb: (err: number, names?: string[], stats?: FuseStat[]) => void): void
    readlink?(path: string, cb: (err: number, target?: string) => void): void
    create?(path: string, mode: number, cb: (err: number, fd?: number) => void): void
    truncate?(path: string, size: number, cb: Done): void
    ftruncate?(path: string, fd: number, size: number, cb: Done): void
    unlink?(path: string, cb: Done): void
    rename?(src: string, dest: string, cb: Done): void
    link?(src: string, dest: string, cb: Done): void
    symlink?(src: string, dest: string, cb: Done): void
    mkdir?(path: string, mode: number, cb: Done): void
    rmdir?(path: string, cb: Done): void
    mknod?(path: string, mode: number, dev: number, cb: Done): void
    chmod?(path: string, mode: number, cb: Done): void
    chown?(path: string, uid: number, gid: number, cb: Done): void
    utimens?(path: string, atime: number, mtime: number, cb: Done): void
    setxattr?(path: string, name: string, value: Buffer, position: number, flags: number, cb: Done): void
    removexattr?(path: string, name: string, cb: Done): void
    getxattr?(path: string, name: string, position: number, cb: (err: number, value?: Buffer | null) => void): void
    listxattr?(path: string, cb: (err: number, list?: string[]) => void): void
    flush?(path: string, fd: number, cb: Done): void
    fsync?(path: string, datasync: boolean, fd: number, cb: Done): void
  }

  export interface FuseOptions {
    /** Per-operation deadline in ms after which fuse-native answers ETIMEDOUT; false disables it. */
    timeout?: number | false | ({ default?: number } & Record<string, number | false | undefined>)
    force?: boolean
    mkdir?: boolean
    debug?: boolean
    allowOther?: boolean
    allowRoot?: boolean
    autoUnmount?: boolean
    defaultPermissions?: boolean
    maxRead?: number
    fsname?: string
    subtype?: string
    kernelCache?: boolean
    autoCache?: boolean
    uid?: number
    gid?: number
    entryTimeout?: number
    attrTimeout?: number
    acAttrTimeout?: number
  }

  export default class Fuse {
    constructor(mnt: string, ops: FuseOps, opts?: FuseOptions)
    readonly mnt: string
    readonly opts: FuseOptions
    mount(cb: (err: Error | null) => void): void
    unmount(cb: (err: Error | null) => void): void
    /** Builds the `-o a,b,c` string handed to libfuse; subclasses may extend it. */
    protected _fuseOptions(): string
    static unmount(mnt: string, cb: (err: Error | null) => void): void
    static readonly ENOENT: number
    static readonly EIO: number
    static readonly EROFS: number
    static readonly EACCES: number
    static readonly EBADF: number
    static readonly EISDIR: number
    static readonly ENOTDIR: number
    static readonly EINVAL: number
    static readonly ETIMEDOUT: number
    static readonly ENODATA: number
    static readonly EOPNOTSUPP: number
    static readonly EPERM: number
    static readonly ENAMETOOLONG: number
  }
}
