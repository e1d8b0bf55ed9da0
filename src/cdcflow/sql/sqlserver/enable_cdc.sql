-- CDC enablement for one captured table (idempotent). Values are driver parameters;
-- no identifier is formatted into the text.

-- name: enable_table
-- Create the capture instance unless it exists. @role_name NULL: no gating role;
-- @supports_net_changes 0: cdcflow reads cdc.fn_cdc_get_all_changes_<capture_instance> only.
IF NOT EXISTS (SELECT 1 FROM cdc.change_tables WHERE capture_instance = %(capture)s)
BEGIN
    EXEC sys.sp_cdc_enable_table
        @source_schema = %(schema)s,
        @source_name = %(table)s,
        @capture_instance = %(capture)s,
        @role_name = NULL,
        @supports_net_changes = 0;
END;

-- name: cleanup_change_table
-- What the CDC cleanup job does: drop changes below a new low water mark (an LSN in
-- cdc.lsn_time_mapping). Used by the real-server contract test to provoke a gap.
EXEC sys.sp_cdc_cleanup_change_table
    @capture_instance = %(capture)s,
    @low_water_mark = %(low_water_mark)s,
    @threshold = 5000;
