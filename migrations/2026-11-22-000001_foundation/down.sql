DROP TABLE audit_log;
DROP FUNCTION audit_log_is_append_only();
DROP TABLE api_tokens;
DROP TABLE machines;
DROP TABLE donations;
DROP TABLE users;
DROP TABLE sites;
DROP TABLE donors;
