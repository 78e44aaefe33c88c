from treemap.cli import main

# guarded: worker processes started with multiprocessing's spawn method import this module again
if __name__ == "__main__":
    main()
