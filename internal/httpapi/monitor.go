package httpapi

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/errs"
)

// MonitorPath is where the asynq queue monitor (asynqmon, read-only) is mounted.
const MonitorPath = "/admin/queues"

// browserKey reads an API key the way a browser can send one: HTTP Basic
// auth with the key as the password (any user name), or a Bearer header.
func browserKey(r *http.Request) (string, bool) {
	if _, pass, ok := r.BasicAuth(); ok && pass != "" {
		return pass, true
	}
	return bearerKey(r)
}

// monitor serves the queue monitor to admins. A browser gets a Basic-auth
// prompt: the password is an admin API key.
func (s *Server) monitor() echo.HandlerFunc {
	h := echo.WrapHandler(s.deps.Monitor)
	allowed := map[apikey.Role]bool{apikey.Admin: true}
	return func(c echo.Context) error {
		token, ok := browserKey(c.Request())
		if !ok {
			c.Response().Header().Set("WWW-Authenticate", `Basic realm="Tend queue monitor (password: an admin API key)"`)
			return errs.E(errs.Unauthorized, "missing_key", "sign in with an admin API key as the password")
		}
		k, err := s.deps.Keys.Authenticate(c.Request().Context(), token)
		if err != nil {
			c.Response().Header().Set("WWW-Authenticate", `Basic realm="Tend queue monitor (password: an admin API key)"`)
			return err
		}
		if !allowed[k.Role] {
			return errs.E(errs.Forbidden, "forbidden", "the queue monitor is for admin keys")
		}
		return h(c)
	}
}
