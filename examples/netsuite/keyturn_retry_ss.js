/**
 * Keyturn order connector for NetSuite: posts again every Sales Order whose last post
 * failed (custbody_keyturn_status = failed: refused by Keyturn, say an item missing from
 * the product map, or Keyturn unreachable). Deploy it as a scheduled script every 15
 * minutes; once the map or Keyturn is fixed, the next run fulfils the order and the
 * status turns to fulfilled. An order that stays refused keeps Keyturn's reason in
 * custbody_keyturn_message, for a saved search or a dashboard.
 *
 * @NApiVersion 2.1
 * @NScriptType ScheduledScript
 * @NModuleScope SameAccount
 */
define(['N/search', 'N/runtime', 'N/log', './keyturn_post'], (search, runtime, log, keyturn) => {
    // record.load 10 + https.post 10 + record.submitFields 10 units, with a margin.
    const USAGE_PER_ORDER = 40;

    const execute = (context) => {
        const failed = search.create({
            type: search.Type.SALES_ORDER,
            filters: [['mainline', 'is', 'T'], 'AND', [keyturn.STATUS, 'is', keyturn.FAILED]],
            columns: ['tranid'],
        });
        let tried = 0;
        let fulfilled = 0;
        failed.run().each((result) => {
            if (runtime.getCurrentScript().getRemainingUsage() < USAGE_PER_ORDER) {
                log.audit({ title: 'Keyturn retry', details: 'usage limit near: the next run goes on' });
                return false;
            }
            tried += 1;
            if (keyturn.postSalesOrder(result.id) === keyturn.FULFILLED) {
                fulfilled += 1;
            }
            return true;
        });
        log.audit({ title: 'Keyturn retry', details: `${fulfilled} of ${tried} failed orders fulfilled` });
    };

    return { execute };
});
