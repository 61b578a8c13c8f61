-- Email layouts are stored with the templates (kind 'layout', named
-- layouts/NAME), so that every worker wraps email in the same one:
-- templates/layouts/default.html, applied by `tend campaigns apply` or PUT
-- /v1/templates/layouts/default, replaces the built-in layout.

-- +goose Up
ALTER TABLE template DROP CONSTRAINT template_kind_check;
ALTER TABLE template ADD CONSTRAINT template_kind_check CHECK (kind IN ('email', 'nudge', 'layout'));

-- +goose Down
DELETE FROM template WHERE kind = 'layout';
ALTER TABLE template DROP CONSTRAINT template_kind_check;
ALTER TABLE template ADD CONSTRAINT template_kind_check CHECK (kind IN ('email', 'nudge'));
