// A stand-in of the NetSuite account a SuiteScript 2.1 script runs in: an AMD loader
// (define) and the N/* modules the Keyturn scripts use, each with the documented
// call shapes (options objects, enums, SuiteScript error names), over records kept
// in a JSON file. N/https posts for real (loopback HTTP), so what the connector
// receives is exactly what the script sent.
//
//   node netsuite.js ACCOUNT.json SCRIPT.js ENTRY [CONTEXT.json]
//
// ACCOUNT.json: {records: {TYPE: {ID: {fields, texts, sublists}}}, secrets, parameters,
// usageLimit, requests, logs}; it is written back with the records as the script left them,
// every request N/https made, and every N/log entry. ENTRY: afterSubmit (CONTEXT:
// {type, recordType, id}) or execute.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const nodeCrypto = require('node:crypto');
const { spawnSync } = require('node:child_process');

const [accountFile, scriptFile, entry, contextText] = process.argv.slice(2);
const account = JSON.parse(fs.readFileSync(accountFile, 'utf8'));
account.requests = account.requests || [];
account.logs = account.logs || [];
// Each execution has its own governance budget (a scheduled script's is 10,000 units).
let usage = account.usageLimit === undefined ? 10000 : account.usageLimit;

function suiteScriptError(name, message) {
    const error = new Error(message);
    error.name = name;
    error.type = 'error.SuiteScriptError';
    return error;
}

function required(options, ...names) {
    if (options === null || typeof options !== 'object') {
        throw suiteScriptError('SSS_MISSING_REQD_ARGUMENT', 'options');
    }
    for (const name of names) {
        if (options[name] === undefined || options[name] === null || options[name] === '') {
            throw suiteScriptError('SSS_MISSING_REQD_ARGUMENT', name);
        }
    }
}

function spend(units) {
    if (usage < units) {
        throw suiteScriptError('SSS_USAGE_LIMIT_EXCEEDED', 'Script Execution Usage Limit Exceeded');
    }
    usage -= units;
}

// --- N/record -------------------------------------------------------------------------

function stored(type, id) {
    const record = ((account.records || {})[type] || {})[String(id)];
    if (!record) {
        throw suiteScriptError('RCRD_DSNT_EXIST', `That record does not exist. ${type} ${id}`);
    }
    return record;
}

function recordObject(type, id) {
    const data = JSON.parse(JSON.stringify(stored(type, id)));
    const field = (value) => (value === undefined ? null : value);
    return {
        id: String(id),
        type: type,
        getValue(options) {
            required(options, 'fieldId');
            return field((data.fields || {})[options.fieldId]);
        },
        getText(options) {
            required(options, 'fieldId');
            const texts = data.texts || {};
            const value = (data.fields || {})[options.fieldId];
            return options.fieldId in texts ? texts[options.fieldId] : value === undefined ? '' : String(value);
        },
        getLineCount(options) {
            required(options, 'sublistId');
            return ((data.sublists || {})[options.sublistId] || []).length;
        },
        getSublistValue(options) {
            required(options, 'sublistId', 'fieldId');
            const lines = (data.sublists || {})[options.sublistId] || [];
            if (!Number.isInteger(options.line) || options.line < 0 || options.line >= lines.length) {
                throw suiteScriptError('SSS_INVALID_SUBLIST_OPERATION', `line ${options.line}`);
            }
            return field(lines[options.line][options.fieldId]);
        },
    };
}

const recordModule = {
    Type: { SALES_ORDER: 'salesorder', INVOICE: 'invoice', CUSTOMER: 'customer' },
    load(options) {
        required(options, 'type', 'id');
        spend(10);
        return recordObject(options.type, options.id);
    },
    submitFields(options) {
        required(options, 'type', 'id', 'values');
        spend(10);
        const record = stored(options.type, options.id);
        record.fields = { ...(record.fields || {}), ...options.values };
        return String(options.id);
    },
};

// --- N/https ----------------------------------------------------------------------------

const httpsModule = {
    Method: { GET: 'GET', POST: 'POST', PUT: 'PUT', DELETE: 'DELETE' },
    post(options) {
        required(options, 'url', 'body');
        spend(10);
        const url = new URL(options.url);
        // NetSuite calls https URLs only; the stand-in also takes plain http to loopback.
        if (url.protocol !== 'https:' && !(url.protocol === 'http:' && url.hostname === '127.0.0.1')) {
            throw suiteScriptError('SSS_INVALID_URL', `The URL must be a fully qualified HTTPS URL: ${options.url}`);
        }
        const request = { url: options.url, method: 'POST', headers: options.headers || {}, body: String(options.body) };
        const run = spawnSync(process.execPath, [path.join(__dirname, 'http_post.js')], {
            input: JSON.stringify(request),
            encoding: 'utf8',
            timeout: 60000,
        });
        const answer = JSON.parse(run.stdout || '{"error": "no answer"}');
        account.requests.push({ ...request, code: answer.code === undefined ? null : answer.code });
        if (answer.error) {
            throw suiteScriptError('SSS_CONNECTION_CLOSED', `The host closed the connection: ${answer.error}`);
        }
        return { code: answer.code, headers: answer.headers, body: answer.body };
    },
};

// --- N/crypto and N/encode ----------------------------------------------------------------

const Encoding = {
    UTF_8: 'UTF_8', BASE_16: 'BASE_16', BASE_32: 'BASE_32', BASE_64: 'BASE_64',
    BASE_64_URL_SAFE: 'BASE_64_URL_SAFE', HEX: 'HEX',
};
const NODE_ENCODING = { UTF_8: 'utf8', BASE_64: 'base64', BASE_64_URL_SAFE: 'base64url', HEX: 'hex' };
const HashAlg = { SHA1: 'SHA1', SHA256: 'SHA256', SHA512: 'SHA512', MD5: 'MD5' };

const cryptoModule = {
    HashAlg: HashAlg,
    createSecretKey(options) {
        if (!options || (!options.secret && !options.guid) || (options.secret && options.guid)) {
            throw suiteScriptError('SSS_MISSING_REQD_ARGUMENT', 'secret or guid');
        }
        const value = (account.secrets || {})[options.secret || options.guid];
        if (value === undefined) {
            throw suiteScriptError('INVALID_SECRET_KEY_LENGTH', `No API secret ${options.secret || options.guid}`);
        }
        const encoding = NODE_ENCODING[options.encoding || Encoding.UTF_8];
        const key = { secret: options.secret, guid: options.guid, encoding: options.encoding };
        Object.defineProperty(key, 'material', { value: Buffer.from(value, encoding), enumerable: false });
        return key;
    },
    createHmac(options) {
        required(options, 'algorithm', 'key');
        if (!HashAlg[options.algorithm]) {
            throw suiteScriptError('SSS_INVALID_ALGORITHM', options.algorithm);
        }
        const hmac = nodeCrypto.createHmac(options.algorithm.toLowerCase(), options.key.material);
        return {
            update(update) {
                required(update, 'input');
                hmac.update(Buffer.from(update.input, NODE_ENCODING[update.inputEncoding || Encoding.UTF_8]));
            },
            digest(digest) {
                const encoding = (digest && digest.outputEncoding) || Encoding.HEX;
                const text = hmac.digest(NODE_ENCODING[encoding]);
                return encoding === Encoding.HEX ? text.toUpperCase() : text;
            },
        };
    },
};

// --- N/runtime, N/log, N/search -------------------------------------------------------------

const runtimeModule = {
    ContextType: { USER_INTERFACE: 'USERINTERFACE', SCHEDULED: 'SCHEDULED' },
    executionContext: entry === 'execute' ? 'SCHEDULED' : 'USERINTERFACE',
    getCurrentScript() {
        return {
            id: 'customscript_keyturn',
            deploymentId: 'customdeploy_keyturn',
            getParameter(options) {
                required(options, 'name');
                const value = (account.parameters || {})[options.name];
                return value === undefined ? null : value;
            },
            getRemainingUsage() {
                return usage;
            },
        };
    },
};

function logger(level) {
    return (options) => {
        account.logs.push({ level, title: String(options.title), details: String(options.details) });
    };
}
const logModule = { debug: logger('DEBUG'), audit: logger('AUDIT'), error: logger('ERROR'), emergency: logger('EMERGENCY') };

function matches(fields, filters) {
    // A filter expression: [field, 'is', value] terms joined by 'AND'.
    const terms = Array.isArray(filters[0]) ? filters : [filters];
    return terms.every((term) => {
        if (term === 'AND' || term === 'and') return true;
        const [name, operator, value] = term;
        if (operator !== 'is') throw suiteScriptError('SSS_INVALID_SRCH_OPERATOR', operator);
        if (name === 'mainline') return true;
        return String(fields[name] === undefined ? '' : fields[name]) === String(value);
    });
}

const searchModule = {
    Type: { SALES_ORDER: 'salesorder', INVOICE: 'invoice' },
    create(options) {
        required(options, 'type');
        return {
            run() {
                return {
                    each(callback) {
                        spend(10);
                        const records = (account.records || {})[options.type] || {};
                        for (const id of Object.keys(records)) {
                            const fields = records[id].fields || {};
                            if (!matches(fields, options.filters || [])) continue;
                            const result = {
                                id: id,
                                recordType: options.type,
                                getValue: (column) => fields[typeof column === 'string' ? column : column.name],
                            };
                            if (callback(result) === false) break;
                        }
                    },
                };
            },
        };
    },
};

// --- the loader ------------------------------------------------------------------------------

const N_MODULES = {
    'N/record': recordModule, 'N/https': httpsModule, 'N/crypto': cryptoModule,
    'N/encode': { Encoding: Encoding }, 'N/runtime': runtimeModule, 'N/log': logModule,
    'N/search': searchModule,
};
const loaded = new Map();

function load(file) {
    const absolute = path.resolve(file);
    if (loaded.has(absolute)) return loaded.get(absolute);
    const source = fs.readFileSync(absolute, 'utf8');
    if (!/@NApiVersion 2\.1/.test(source)) {
        throw new Error(`${file}: no @NApiVersion 2.1 tag`);
    }
    let exported;
    const define = (dependencies, factory) => {
        const modules = dependencies.map((name) => {
            if (name in N_MODULES) return N_MODULES[name];
            if (name.startsWith('./') || name.startsWith('../')) {
                return load(path.join(path.dirname(absolute), `${name}.js`));
            }
            throw suiteScriptError('MODULE_DOES_NOT_EXIST', name);
        });
        exported = factory(...modules);
    };
    vm.runInThisContext(`(function (define) {${source}\n})`, { filename: absolute })(define);
    loaded.set(absolute, exported);
    return exported;
}

const UserEventType = {
    CREATE: 'create', EDIT: 'edit', XEDIT: 'xedit', DELETE: 'delete', APPROVE: 'approve',
    REJECT: 'reject', CANCEL: 'cancel', COPY: 'copy', VIEW: 'view',
};

let failure = null;
try {
    const script = load(scriptFile);
    if (typeof script[entry] !== 'function') throw new Error(`${scriptFile} has no entry point ${entry}`);
    if (entry === 'execute') {
        script.execute({ type: 'SCHEDULED' });
    } else {
        const event = JSON.parse(contextText);
        script[entry]({
            type: event.type,
            UserEventType: UserEventType,
            newRecord: recordObject(event.recordType, event.id),
        });
    }
} catch (error) {
    failure = error;
}
account.remainingUsage = usage;
fs.writeFileSync(accountFile, JSON.stringify(account, null, 2));
if (failure) {
    process.stderr.write(`${failure.name}: ${failure.message}\n${failure.stack}\n`);
    process.exit(1);
}
