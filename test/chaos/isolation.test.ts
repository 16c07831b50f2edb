/**
 * Randomized two-user isolation of issue 8 at length: the fast suite's property with many more runs.
 */
import { defineIsolationSuite } from '../reliability/support/isolation-suite.js';

defineIsolationSuite('two-user isolation', 300, 40);
