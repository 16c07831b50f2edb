/** Entry point of the `agentfleet` command line. */
import { buildProgram } from './program.js';

await buildProgram().parseAsync(process.argv);
