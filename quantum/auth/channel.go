package auth

import (
	"context"
	"fmt"

	"qkdkms/quantum"
)

// Channel authenticates every message of an inner channel: Send appends a
// Wegman–Carter tag, Recv checks and strips it. Each direction has its own
// Tagger (own sequence numbers and own pads), so the two parties never
// compete for pad material: Alice's send pads are Bob's receive pads.
type Channel struct {
	inner quantum.Channel
	send  *Tagger
	recv  *Tagger
}

var _ quantum.Channel = (*Channel)(nil)

// NewChannel wraps inner.
func NewChannel(inner quantum.Channel, send, recv *Tagger) *Channel {
	return &Channel{inner: inner, send: send, recv: recv}
}

// Send tags and sends msg.
func (c *Channel) Send(ctx context.Context, msg []byte) error {
	tag, err := c.send.Tag(msg)
	if err != nil {
		return fmt.Errorf("auth: tag outgoing message: %w", err)
	}
	framed := make([]byte, 0, len(msg)+TagSize)
	framed = append(append(framed, msg...), tag[:]...)
	return c.inner.Send(ctx, framed)
}

// Recv receives and checks the next message. After ErrBadTag the channel
// is unusable and the session must be abandoned.
func (c *Channel) Recv(ctx context.Context) ([]byte, error) {
	framed, err := c.inner.Recv(ctx)
	if err != nil {
		return nil, err
	}
	if len(framed) < TagSize {
		return nil, fmt.Errorf("auth: message of %d bytes has no tag: %w", len(framed), ErrBadTag)
	}
	msg, tag := framed[:len(framed)-TagSize], framed[len(framed)-TagSize:]
	if err := c.recv.Verify(msg, tag); err != nil {
		return nil, fmt.Errorf("auth: incoming message: %w", err)
	}
	return msg, nil
}
