"""Rules that need evidence of an intent, not one everyday word; exclusions for everyday uses.

The seeded rules of 0002 routed on single words (update, delete, table, file, path, class, api...),
so everyday questions started MCP servers and skipped the cache. This adds ``exclusions`` and
replaces the seeded rules an operator has not edited: a rule whose pattern, description and order
are still the ones 0002 wrote gets the rule below; any other rule is left as the operator made it.
Going back restores 0002's values on the rules still exactly as this migration left them.
"""

from django.db import migrations, models

# What 0002 seeded: (pattern, order, description). Copied here, as a migration must not change.
PREVIOUS = {
    "web": (r"\b(https?|api|fetch|url|endpoint|rest|graphql)\b", 10, ""),
    "database": (r"\b(sql|database|table|schema|select|insert|update|delete|join)\b", 20, ""),
    "filesystem": (r"\b(file|folder|directory|path)\b|\.(txt|json|csv|md)\b", 30, ""),
    "code": (r"\b(function|class|implement|refactor|debug|method|variable)\b", 40, ""),
}

_ID = r"[\w.`\"']+"  # a table or column name, bare or quoted
_DB_TABLES = (
    r"users?|orders?|customers?|products?|invoices?|payments?|accounts?|employees?|transactions?"
    r"|sessions?|subscriptions?|inventory|order_items|line_items"
)
_EXTENSIONS = (
    r"txt|md|markdown|rst|csv|tsv|json|jsonl|ya?ml|toml|ini|cfg|conf|log|xml|html?|pdf|docx?"
    r"|xlsx?|pptx?|odt|py|js|ts|tsx|jsx|rs|java|rb|php|cpp|sh|sql|ipynb|png|jpe?g|gif|svg|zip|tar|gz"
)
_TLDS = r"com|org|net|io|dev|gov|edu|ai|app|co|uk|de|fr|eu|info"

# name -> (order, pattern lines, exclusion lines, description)
RULES = {
    "web": (
        10,
        [
            r"\bhttps?://\S+",
            r"\bwww\.[\w-]+\.\w",
            # a domain name, not the end of an e-mail address
            # (not the end of a Java package name such as java.io.File either)
            rf"(^|[^@\w.-])[a-z0-9-]+(\.[a-z0-9-]+)*\.({_TLDS})(/|:\d|\.?(\s|$)|[?#,;!)\"'\]])",
            r"\b(search|browse|scour|check)\s+(the\s+)?(web|internet|online)\b",
            r"\b(web|internet|online)\s+search\b",
            r"\blook\s+up\b[^.?!\n]{0,60}\bonline\b",
            r"\b(find|search|look)\b[^.?!\n]{0,40}\bon\s+the\s+(web|internet)\b",
            r"\bgoogle\s+(the|it|this|that|for|what|how|who|when|where|whether|if)\b",
            r"\b(fetch|open|read|scrape|crawl|download|summari[sz]e)\s+(the|this|that|their|our|my)\s+"
            r"(web\s*page|website|site|url|link|homepage)\b",
            r"\b(latest|today'?s|current|breaking)\s+(news|headlines)\b",
        ],
        [],
        "Evidence of a web request: a URL or domain name, or an explicit request to search the web, "
        "look something up online, fetch a page, or for the latest news. Words such as api, rest or "
        "fetch alone are not.",
    ),
    "database": (
        20,
        [
            # SQL statements
            r"\bselect\s+(\*|distinct\b|count\s*\(|sum\s*\(|avg\s*\(|max\s*\(|min\s*\()",
            rf"\bselect\s+[^.?!\n]+\s+from\s+{_ID}\s*(where|group\s+by|order\s+by|limit|join|inner|left|;)",
            rf"\binsert\s+into\s+{_ID}\s*(\(|values\b|select\b)",
            rf"\bupdate\s+{_ID}\s+set\s+{_ID}\s*=",
            rf"\bdelete\s+from\s+{_ID}\s*(where\b|;)",
            rf"\b(create|alter|drop|truncate)\s+table\s+(if\s+(not\s+)?exists\s+)?{_ID}\s*(\(|;|add\b|drop\b|rename\b)",
            rf"\bjoin\s+{_ID}(\s+\w+)?\s+on\s+{_ID}\s*=",
            # an explicit request for SQL
            r"\b(write|run|execute|fix|optimi[sz]e|generate|give\s+me)\b[^.?!\n]{0,20}\bsql\b",
            r"\bsql\s+(query|statement)\s+(to|that|for)\b",
            # a named database or table
            r"\b(the|our|my|this|that|production|prod|staging|local)\s+(sqlite3?\s+|postgres(ql)?\s+|mysql\s+)?(db|database)\b",
            r"\b(in|on|from|into|against)\s+(the\s+)?(sqlite3?|postgres(ql)?|mysql|mariadb)\b",
            rf"\b({_DB_TABLES})\s+(and\s+\w+\s+)?tables?\b",
            r"\b[a-z]+_[a-z0-9_]+\s+tables?\b",
            r"\btables?\s+(named|called)\s+[\w`\"']+",
            r"[`\"'][\w.]+[`\"']\s+table\b",
        ],
        [],
        "Evidence of a database question: SQL syntax, an explicit request for SQL, or a named "
        "database or table (the orders table, our postgres database). Words such as select, update, "
        "delete, join or table alone are not.",
    ),
    "code": (
        30,
        [
            # code
            r"```",
            r"`[^`\n]*[=;(){}\[\]][^`\n]*`",
            r"\bdef\s+\w+\s*\(",
            r"\bfunction\s+\w*\s*\([^)]*\)\s*\{",
            r"\)\s*=>|\b\w+\s*=>\s*[\w{(]",
            r"\b(const|var)\s+\w+\s*=",
            r"\bclass\s+\w+\s*(\([\w., ]*\)\s*:|\{|extends\s+\w|implements\s+\w)",
            r"\bfrom\s+[\w.]+\s+import\s+\w",
            r"\bimport\s+[\w.]+\s+as\s+\w",
            r"#include\s*[<\"]",
            r"\b(console\.log|System\.out\.print\w*|printf|println!?)\s*\(",
            r"\bpublic\s+static\s+void\b|\bfn\s+\w+\s*\(|\bfunc\s+\w+\s*\(",
            r"\b\w+\.\w+\([^()\n]*\)\.\w+\(",
            r"\b[a-z_]\w*\(\)",
            # a stack trace or an error from a program
            r"\btraceback \(most recent call last\)",
            r"\bFile \"[^\"]+\", line \d+",
            r"\bat\s+[\w$.]+\([\w$]+\.(java|kt|scala):\d+\)",
            r"\b(Type|Value|Key|Index|Attribute|Name|Syntax|Reference|Range|Runtime|Import|ModuleNotFound"
            r"|Assertion|ZeroDivision|Recursion|NotImplemented|OS|UnicodeDecode|UnicodeEncode|Lookup"
            r"|NullPointer|IllegalArgument|IllegalState|ClassNotFound|ClassCast|ArrayIndexOutOfBounds"
            r"|IndexOutOfBounds|ConcurrentModification|NumberFormat|IO|FileNotFound|OutOfMemory"
            r"|StackOverflow|Arithmetic|UnsupportedOperation)(Error|Exception)\b",
            r"\bpanicked at\b|\bsegmentation fault\b|\bcore dumped\b|\bstack trace\b",
            r"\bcannot read propert(y|ies) of (undefined|null)\b|\bis not a function\b",
            # a repository
            r"\b(the|our|my|this|that|your|their|a\s+github|a\s+git)\s+([\w./-]+\s+){0,2}(repo|repository)\b",
            r"\b[\w.-]+/[\w.-]+\s+(repo|repository)\b|\bcode\s*base\b",
            r"\bpull\s+requests?\b|\bmerge\s+conflicts?\b|\bcommit\s+[0-9a-f]{7,40}\b",
            r"\bgit\s+(clone|push|pull|rebase|merge|log|diff|blame|bisect|stash|status|checkout|commit|branch|reset|cherry-pick)\b",
            r"\b(feature|main|master|release|develop|dev)\s+branch\b",
            r"\b(refactor|debug|lint|unit[- ]test)\s+(this|the|my|that|our)\s+(code|function|method|class|module|script|program|snippet|component|test)\b",
            r"\brefactor\s+(this|the|my|that|our)\b",
        ],
        [],
        "Evidence of a question about code: code itself, a stack trace or a program's error, or a "
        "repository (pull requests, branches, commits). Words such as function, class, method or "
        "implement alone are not.",
    ),
    "filesystem": (
        40,
        [
            # a path
            r"(^|[\s\"'(`=])(~|\.{1,2})?/[\w.-]+(/[\w.-]*)+",
            r"(^|[\s\"'(`])~/[\w.-]+",
            r"\b[a-z]:\\[\w\\. -]+",
            # a file name with an extension
            rf"\b[\w-]+\.({_EXTENSIONS})\b",
            r"(^|[\s\"'(`])\.(env|gitignore|dockerignore|bashrc|zshrc|profile|npmrc|editorconfig)\b",
            # an explicit request for files
            r"\b(read|open|list|show|cat|count|summari[sz]e|search|grep|scan|check|compare|rename|move|copy|edit)\s+"
            r"(me\s+)?(the|this|that|these|those|my|our|all(\s+the)?|every|each)\s+([\w.-]+\s+){0,2}"
            r"(files?|folders?|director(y|ies))\b",
            r"\b(files?|folders?)\s+in\s+(this|the|my|our|that)\s+([\w.-]+\s+)?(folder|director(y|ies)|project|workspace)\b",
            r"\b(this|current|working|project|home|parent|root)\s+(directory|folder)\b",
            r"\bin\s+(the|my|our)\s+[\w.-]+\s+(folder|directory)\b",
        ],
        [
            # 'file' as a verb
            r"\b(to|i|we|you|they|please|should|must|can|could|will|would|and|or|then)\s+file\b",
            r"\bfile\s+(a|an|my|your|our|his|her|their|for|taxes|away|under|jointly|separately)\b",
            # how-to questions ask about files in general, not for these ones
            r"\bhow\s+(do|can|could|should|would)\s+(i|you|we|one)\s+\w+",
            # everyday folders and files
            r"\b(spam|junk|inbox|e-?mail|mail|sent|trash|outlook|gmail)\s+folders?\b",
            r"\b(nail|rank\s+and|single|case|police|personnel)\s+files?\b",
            # libraries named like files
            r"\b(node|next|nuxt|vue|react|express|three|d3|chart|nest|ember|backbone|angular|alpine|p5|moment)\.js\b",
        ],
        "Evidence of a request about files: a path, a file name with an extension, or an explicit "
        "request for files or folders (read the file, list the files in the docs folder). 'File' as "
        "a verb, 'path', and how-to questions about files in general are not.",
    ),
}


def _seeded(apps, *, old, new):
    """Rows still exactly as ``old`` describes them get ``new``; every other row is left alone."""
    IntentRule = apps.get_model("routing", "IntentRule")
    for rule in IntentRule.objects.filter(name__in=list(old)):
        pattern, order, description, exclusions = old[rule.name]
        if (rule.pattern, rule.order, rule.description, rule.exclusions) != (
            pattern,
            order,
            description,
            exclusions,
        ):
            continue
        rule.pattern, rule.order, rule.description, rule.exclusions = new[rule.name]
        rule.save(update_fields=["pattern", "order", "description", "exclusions", "updated_at"])


def _previous():
    return {
        name: (pattern, order, description, "") for name, (pattern, order, description) in PREVIOUS.items()
    }


def _current():
    return {
        name: ("\n".join(lines), order, description, "\n".join(exclusions))
        for name, (order, lines, exclusions, description) in RULES.items()
    }


def update_seeded_rules(apps, schema_editor):
    _seeded(apps, old=_previous(), new=_current())


def restore_seeded_rules(apps, schema_editor):
    _seeded(apps, old=_current(), new=_previous())


class Migration(migrations.Migration):
    dependencies = [("routing", "0002_seed_default_routes")]
    operations = [
        migrations.AddField(
            model_name="intentrule",
            name="exclusions",
            field=models.TextField(
                blank=True,
                help_text="Regular expressions, one per line, for text that is not evidence of this "
                "intent (e.g. 'file' as a verb: \\bto file\\b). What they match is set aside before "
                "the pattern is tried, so evidence elsewhere in the query still counts.",
            ),
        ),
        migrations.AlterField(
            model_name="intentrule",
            name="pattern",
            field=models.TextField(
                help_text="Regular expressions (RE2 syntax: linear time, no lookaround or "
                "backreferences), one per line, matched case-insensitively anywhere in the query: the "
                "rule matches when any line does. Use \\b for whole words."
            ),
        ),
        migrations.RunPython(update_seeded_rules, restore_seeded_rules),
    ]
