/**
 * Hostile-input fuzzing of issue 8 at length: the fast suite's properties with many more runs.
 */
import { defineFuzzSuite } from '../reliability/support/fuzz-suite.js';

defineFuzzSuite('hostile input', 3000);
