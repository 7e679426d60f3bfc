package harness

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Full disks (Options.DataTmpfsMB, root only): every node's data directory
// is a tmpfs of that size, mounted before the node first starts and
// unmounted by StopAll. FillDisk writes a filler file into a node's data
// directory until the file system is full; FreeDisk removes it.

const fillerName = "testcluster-filler"

func (c *Cluster) mountData(n *NodeSpec) error {
	if c.opts.DataTmpfsMB <= 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mounted[n.ID] {
		return nil
	}
	if err := os.MkdirAll(n.DataDir, 0o700); err != nil {
		return err
	}
	opts := fmt.Sprintf("size=%dm,mode=0700", c.opts.DataTmpfsMB)
	if err := syscall.Mount("tmpfs", n.DataDir, "tmpfs", 0, opts); err != nil {
		return fmt.Errorf("harness: mount tmpfs on %s (root only): %w", n.DataDir, err)
	}
	if c.mounted == nil {
		c.mounted = map[string]bool{}
	}
	c.mounted[n.ID] = true
	return nil
}

func (c *Cluster) unmountAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.mounted {
		if n := c.Layout.Node(id); n != nil {
			_ = syscall.Unmount(n.DataDir, syscall.MNT_DETACH)
		}
	}
	c.mounted = nil
}

// FillDisk fills node id's data file system (DataTmpfsMB only).
func (c *Cluster) FillDisk(id string) error {
	n := c.Layout.Node(id)
	if n == nil {
		return fmt.Errorf("%w: %s", ErrUnknownNode, id)
	}
	if c.opts.DataTmpfsMB <= 0 {
		return errors.New("harness: FillDisk needs Options.DataTmpfsMB")
	}
	f, err := os.OpenFile(filepath.Join(n.DataDir, fillerName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("harness: fill disk: %w", err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return nil
			}
			return fmt.Errorf("harness: fill disk: %w", err)
		}
	}
}

// FreeDisk removes the filler written by FillDisk.
func (c *Cluster) FreeDisk(id string) error {
	n := c.Layout.Node(id)
	if n == nil {
		return fmt.Errorf("%w: %s", ErrUnknownNode, id)
	}
	if err := os.Remove(filepath.Join(n.DataDir, fillerName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("harness: free disk: %w", err)
	}
	return nil
}
