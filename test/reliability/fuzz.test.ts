/**
 * Fast variant of the hostile-input fuzzing (the long one is test/chaos/fuzz.test.ts): every route gets
 * random methods, ids, query strings, headers and bodies; no 5xx, no crash, and the counts add up.
 */
import { defineFuzzSuite } from './support/fuzz-suite.js';

defineFuzzSuite('hostile input (fast)', 300);
