-- Serving database initialisation (idempotent). Nothing to create at database level:
-- cdcflow's tables live in the schema search_path points to (public by default).
SELECT 1;
