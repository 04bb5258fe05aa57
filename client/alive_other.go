//go:build !unix

package client

func (c *pconn) alive() bool {
	if c.br.Buffered() > 0 {
		return false
	}
	return aliveByDeadline(c)
}
