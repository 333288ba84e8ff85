import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'coverage/', '.scratch/', '.lab/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-console': 'off',
    },
  },
  {
    // A failing assert.ok(value) without a message makes node:assert build one from the source
    // text; under tsx that lookup spun for minutes (a hung test run instead of a failure).
    files: ['test/**/*.ts', 'bench/**/*.ts'],
    rules: {
      'no-restricted-syntax': [
        'error',
        {
          selector: "CallExpression[arguments.length=1][callee.type='MemberExpression'][callee.object.name='assert'][callee.property.name='ok']",
          message: 'assert.ok needs a message (node builds one from the source text otherwise, which can hang under tsx)',
        },
        {
          selector: "CallExpression[arguments.length=1][callee.type='Identifier'][callee.name='assert']",
          message: 'assert() needs a message (node builds one from the source text otherwise, which can hang under tsx)',
        },
      ],
    },
  },
  {
    files: ['**/*.cjs'],
    languageOptions: { sourceType: 'commonjs', globals: { module: 'writable', require: 'readonly' } },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly', URL: 'readonly' } },
  },
);
