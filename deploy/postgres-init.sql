-- What a DBA runs once for Flowstate (docs/operations.md, "Database roles", option A): an owner
-- that is no superuser and may not create roles, and the app role it switches to. Run by the
-- postgres image on a fresh volume (deploy/compose.yaml).
CREATE ROLE flowstate LOGIN PASSWORD 'flowstate';
CREATE DATABASE flowstate OWNER flowstate;
CREATE ROLE flowstate_app NOLOGIN;
GRANT flowstate_app TO flowstate;
