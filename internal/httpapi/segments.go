package httpapi

import (
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/segment"
)

func (s *Server) createSegment(c echo.Context) error {
	var in segment.Input
	if err := bind(c, &in); err != nil {
		return err
	}
	seg, err := s.deps.Segments.Create(c.Request().Context(), in)
	if err != nil {
		return err
	}
	s.segmentChanged(c, seg)
	auditTarget(c, "segment %s", seg.Name)
	return c.JSON(http.StatusCreated, seg)
}

func (s *Server) updateSegment(c echo.Context) error {
	var in segment.Input
	if err := bind(c, &in); err != nil {
		return err
	}
	seg, err := s.deps.Segments.Update(c.Request().Context(), c.Param("name"), in)
	if err != nil {
		return err
	}
	s.segmentChanged(c, seg)
	auditTarget(c, "segment %s", seg.Name)
	return c.JSON(http.StatusOK, seg)
}

func (s *Server) segmentChanged(c echo.Context, seg segment.Segment) {
	if s.deps.Signals != nil && seg.Status == segment.StatusBuilding {
		s.deps.Signals.SegmentChanged(c.Request().Context(), seg.ID, seg.Generation)
	}
}

func (s *Server) deleteSegment(c echo.Context) error {
	if err := s.deps.Segments.Delete(c.Request().Context(), c.Param("name")); err != nil {
		return err
	}
	auditTarget(c, "segment %s", c.Param("name"))
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) getSegment(c echo.Context) error {
	seg, err := s.deps.Segments.Get(c.Request().Context(), c.Param("name"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, seg)
}

func (s *Server) listSegments(c echo.Context) error {
	segs, err := s.deps.Segments.List(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"segments": segs})
}

func (s *Server) previewSegment(c echo.Context) error {
	var in struct {
		Predicate string `json:"predicate"`
		Sample    *int   `json:"sample,omitempty"`
	}
	if err := bind(c, &in); err != nil {
		return err
	}
	n := 10
	if in.Sample != nil {
		if *in.Sample < 0 || *in.Sample > 100 {
			return errs.E(errs.Invalid, "invalid_sample", "sample must be 0 to 100").With("field", "sample")
		}
		n = *in.Sample
	}
	count, sample, rtErrs, err := s.deps.Engine.Preview(c.Request().Context(), in.Predicate, n)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"count": count, "sample": sample, "runtime_errors": rtErrs})
}

func (s *Server) segmentMembers(c echo.Context) error {
	limit, err := queryInt(c, "limit", 100, 1, 1000)
	if err != nil {
		return err
	}
	var after int64
	if v := c.QueryParam("after"); v != "" {
		if after, err = strconv.ParseInt(v, 10, 64); err != nil || after < 0 {
			return errs.E(errs.Invalid, "invalid_parameter", "after must be the next_after of a previous page")
		}
	}
	members, err := s.deps.Segments.Members(c.Request().Context(), c.Param("name"), after, limit)
	if err != nil {
		return err
	}
	out := map[string]any{"members": members}
	if len(members) == limit {
		out["next_after"] = strconv.FormatInt(members[len(members)-1].AccountID, 10)
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) accountSegments(c echo.Context) error {
	ctx := c.Request().Context()
	a, err := s.deps.Accounts.Get(ctx, c.Param("id"))
	if err != nil {
		return err
	}
	limit, err := queryInt(c, "limit", 100, 1, 1000)
	if err != nil {
		return err
	}
	hist, err := s.deps.Segments.History(ctx, a.ID, limit)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"history": hist})
}
