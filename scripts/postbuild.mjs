// Copies non-TypeScript assets (SQL) next to the compiled code and marks the CLI executable.
import { chmodSync, cpSync, existsSync } from 'node:fs';

if (existsSync('src/lab/sql')) cpSync('src/lab/sql', 'dist/lab/sql', { recursive: true });
chmodSync('dist/cli.js', 0o755);
