package host

import "context"

// OpenUninstrumented is Open without the load-time instrumentation, for
// tests that compare the two.
func OpenUninstrumented(ctx context.Context, dir string, opts Options) (*Host, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	h, err := New(ctx, opts)
	if err != nil {
		return nil, err
	}
	h.uninstrumented = true
	for _, e := range m.Plugins {
		b, err := readModule(dir, e)
		if err == nil {
			err = h.Add(ctx, e.Info, b)
		}
		if err != nil {
			h.Close(ctx)
			return nil, err
		}
	}
	return h, nil
}
