package powerfs

import (
	"context"
	"maps"
	"slices"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// fnode serves one model node over FUSE. go-fuse keeps its own tree of
// Inodes as a cache of lookups; the model is the truth, so every operation
// goes to it under FS.mu.
type fnode struct {
	fs.Inode
	pfs *FS
	n   *node
}

// handle is an open file; only its flags matter (O_APPEND).
type handle struct{ flags uint32 }

var (
	_ fs.NodeLookuper    = (*fnode)(nil)
	_ fs.NodeGetattrer   = (*fnode)(nil)
	_ fs.NodeSetattrer   = (*fnode)(nil)
	_ fs.NodeReaddirer   = (*fnode)(nil)
	_ fs.NodeCreater     = (*fnode)(nil)
	_ fs.NodeMkdirer     = (*fnode)(nil)
	_ fs.NodeUnlinker    = (*fnode)(nil)
	_ fs.NodeRmdirer     = (*fnode)(nil)
	_ fs.NodeRenamer     = (*fnode)(nil)
	_ fs.NodeOpener      = (*fnode)(nil)
	_ fs.NodeReader      = (*fnode)(nil)
	_ fs.NodeWriter      = (*fnode)(nil)
	_ fs.NodeFsyncer     = (*fnode)(nil)
	_ fs.NodeFlusher     = (*fnode)(nil)
	_ fs.NodeAllocater   = (*fnode)(nil)
	_ fs.NodeStatfser    = (*fnode)(nil)
	_ fs.NodeOpendirer   = (*fnode)(nil)
	_ fs.NodeReleaser    = (*fnode)(nil)
	_ fs.NodeLinker      = (*fnode)(nil)
	_ fs.NodeSymlinker   = (*fnode)(nil)
	_ fs.NodeMknoder     = (*fnode)(nil)
	_ fs.NodeAccesser    = (*fnode)(nil)
	_ fs.NodeOnForgetter = (*fnode)(nil)
)

func (f *fnode) attr(out *fuse.Attr) {
	n := f.n
	out.Ino = n.ino
	out.Mode = n.perm
	if n.dir {
		out.Mode |= syscall.S_IFDIR
		out.Nlink = 2
		out.Size = 4096
	} else {
		out.Mode |= syscall.S_IFREG
		out.Nlink = 1
		out.Size = uint64(n.size)
		out.Blocks = uint64(len(n.pages)) * pageSize / 512
	}
	out.Blksize = pageSize
	out.SetTimes(nil, &n.mtime, &n.mtime)
}

func (f *fnode) child(ctx context.Context, n *node, out *fuse.EntryOut) *fs.Inode {
	c := &fnode{pfs: f.pfs, n: n}
	c.attr(&out.Attr)
	mode := uint32(syscall.S_IFREG)
	if n.dir {
		mode = syscall.S_IFDIR
	}
	return f.NewInode(ctx, c, fs.StableAttr{Mode: mode, Ino: n.ino})
}

func (f *fnode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	c, ok := f.n.entries[name]
	if !ok {
		return nil, syscall.ENOENT
	}
	return f.child(ctx, c, out), 0
}

func (f *fnode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	f.attr(&out.Attr)
	return 0
}

func (f *fnode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	if size, ok := in.GetSize(); ok {
		if f.n.dir {
			return syscall.EISDIR
		}
		if int64(size) > f.n.size && f.pfs.full {
			return syscall.ENOSPC
		}
		f.n.truncate(int64(size))
	}
	if mode, ok := in.GetMode(); ok {
		f.n.perm = mode & 0o7777
	}
	if mtime, ok := in.GetMTime(); ok {
		f.n.mtime = mtime
	}
	f.attr(&out.Attr)
	return 0
}

func (f *fnode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	var list []fuse.DirEntry
	for _, name := range slices.Sorted(maps.Keys(f.n.entries)) {
		c := f.n.entries[name]
		mode := uint32(syscall.S_IFREG)
		if c.dir {
			mode = syscall.S_IFDIR
		}
		list = append(list, fuse.DirEntry{Name: name, Ino: c.ino, Mode: mode})
	}
	return fs.NewListDirStream(list), 0
}

func (f *fnode) Opendir(ctx context.Context) syscall.Errno { return 0 }

func (f *fnode) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	if f.pfs.full {
		return nil, nil, 0, syscall.ENOSPC
	}
	n, errno := f.pfs.t.create(f.n, name, mode&0o7777, false)
	if errno == syscall.EEXIST && flags&syscall.O_EXCL == 0 {
		// The kernel asks to create a name it could not find a moment
		// ago; open what is there now, as open(2) would.
		n, errno = f.n.entries[name], 0
		if n.dir {
			return nil, nil, 0, syscall.EISDIR
		}
		if flags&syscall.O_TRUNC != 0 {
			n.truncate(0)
		}
	}
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return f.child(ctx, n, out), &handle{flags: flags}, 0, 0
}

func (f *fnode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	if f.pfs.full {
		return nil, syscall.ENOSPC
	}
	n, errno := f.pfs.t.create(f.n, name, mode&0o7777, true)
	if errno != 0 {
		return nil, errno
	}
	return f.child(ctx, n, out), 0
}

func (f *fnode) Unlink(ctx context.Context, name string) syscall.Errno {
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	return f.pfs.t.remove(f.n, name, false)
}

func (f *fnode) Rmdir(ctx context.Context, name string) syscall.Errno {
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	return f.pfs.t.remove(f.n, name, true)
}

func (f *fnode) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	to, ok := newParent.(*fnode)
	if !ok {
		return syscall.EXDEV
	}
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	return f.pfs.t.rename(f.n, name, to.n, newName, flags)
}

// Hard links, symlinks and device nodes: the data dirs use none of them,
// and a model of their durability would be guesswork.
func (f *fnode) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (f *fnode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (f *fnode) Mknod(ctx context.Context, name string, mode, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (f *fnode) Access(ctx context.Context, mask uint32) syscall.Errno { return 0 }

func (f *fnode) OnForget() {}

func (f *fnode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	if f.n.dir {
		return nil, 0, syscall.EISDIR
	}
	if flags&syscall.O_TRUNC != 0 && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		f.n.truncate(0)
	}
	// FOPEN_DIRECT_IO: no kernel page cache for these files, so every
	// read comes here and nothing cached outlives a cut.
	return &handle{flags: flags}, fuse.FOPEN_DIRECT_IO, 0
}

func (f *fnode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	if f.n.dir {
		return nil, syscall.EISDIR
	}
	return fuse.ReadResultData(dest[:f.n.read(dest, off)]), 0
}

func (f *fnode) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if !f.pfs.waitStall(ctx, false) {
		return 0, syscall.EINTR
	}
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	if f.pfs.full {
		return 0, syscall.ENOSPC
	}
	if h, ok := fh.(*handle); ok && h.flags&syscall.O_APPEND != 0 {
		off = f.n.size
	}
	f.n.write(data, off)
	f.pfs.stats.Writes++
	return uint32(len(data)), 0
}

func (f *fnode) Allocate(ctx context.Context, fh fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	if mode != 0 && mode != 1 { // 1: FALLOC_FL_KEEP_SIZE
		return syscall.EOPNOTSUPP
	}
	if f.pfs.full {
		return syscall.ENOSPC
	}
	if end := int64(off + size); mode == 0 && end > f.n.size {
		f.n.truncate(end) // the new range reads as zeros, like preallocated space
	}
	return 0
}

func (f *fnode) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	if !f.pfs.waitStall(ctx, true) {
		return syscall.EINTR
	}
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	if f.pfs.full && !f.n.dir && len(f.n.dirty) > 0 {
		return syscall.ENOSPC
	}
	f.n.sync()
	f.pfs.stats.Fsyncs++
	return 0
}

func (f *fnode) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

func (f *fnode) Release(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

func (f *fnode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	f.pfs.mu.Lock()
	defer f.pfs.mu.Unlock()
	const blocks = 1 << 28 // 1 TiB of 4 KiB blocks: the model has no size
	out.Bsize, out.Frsize, out.NameLen = pageSize, pageSize, 255
	out.Blocks, out.Bfree, out.Bavail = blocks, blocks, blocks
	if f.pfs.full {
		out.Bfree, out.Bavail = 0, 0
	}
	out.Files, out.Ffree = 1<<20, 1<<20
	return 0
}

var zero time.Duration
